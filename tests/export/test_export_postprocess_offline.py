"""smr_postprocess run in-process (fake python backend utils) against PyTorch + scikit-learn + smr.core.

The offline equivalence of the export issue: for a few hundred patches, the served pipeline
(onnxruntime on the exported graph, then the exported model.py on its own vendored core) gives
the same class, probabilities (1e-5) and curve positions (1e-5) as the PyTorch model, scikit-learn's
``SVC.predict_proba`` and ``smr.core``'s projection.
"""

from __future__ import annotations

import json
import warnings

import fake_triton_utils as fake
import numpy as np
import pytest

from smr.core.contract import DEFAULT_REVIEW_MARGIN, MODEL_NAMES
from smr.core.curves_json import curves_from_json, project_all
from smr.core.review import class_stages, review
from smr.export.onnx_backbone import onnx_embed, ort_session


@pytest.fixture(scope="module")
def postprocess(repo64):
    return fake.load_model(repo64, "smr_postprocess")


@pytest.fixture(scope="module")
def patches(run64):
    """All 320 patches of the run (training and validation split)."""
    return run64.images(run64.train + run64.val)


def _sklearn_proba(svc, x):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return svc.predict_proba(x.astype(np.float64))


def _run(model, batches):
    responses = model.execute([fake.request(EMBEDDING=b) for b in batches])
    assert len(responses) == len(batches)
    return responses


def test_offline_equivalence_with_pytorch_sklearn_and_core(repo64, run64, postprocess, patches):
    images, _ = patches
    assert len(images) >= 300
    served_emb = onnx_embed(ort_session(repo64 / "smr_backbone/1/model.onnx"), images)
    # requests of uneven sizes, batched into one execute as Triton's dynamic batcher would
    cuts = [0, 1, 8, 72, 73, 200, len(images)]
    responses = _run(postprocess, [served_emb[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)])
    assert not any(r.has_error() for r in responses)
    out = {name: np.concatenate([r.output(name) for r in responses]) for name in postprocess._module.OUTPUTS}

    ref_emb = run64.reference_embeddings(run64.train + run64.val)
    ref_proba = _sklearn_proba(run64.svc, ref_emb)
    curves = curves_from_json(json.loads((run64.path / "curves.json").read_text()))
    ref_t, ref_d = project_all(curves, ref_emb.astype(np.float64))

    assert out["PROBABILITIES"].dtype == np.float32 and out["PROBABILITIES"].shape == ref_proba.shape
    np.testing.assert_allclose(out["PROBABILITIES"], ref_proba, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["MATURITY"], ref_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["CURVE_DISTANCE"], ref_d, atol=1e-5, rtol=0)
    # same class, except where the reference itself is a tie within the tolerance
    top2 = np.sort(ref_proba, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2e-5
    assert decided.mean() > 0.95
    assert out["CLASS_ID"].shape == (len(images), 1) and out["CLASS_ID"].dtype == np.int32
    np.testing.assert_array_equal(out["CLASS_ID"][decided, 0], ref_proba.argmax(axis=1)[decided])
    # the ensemble's EMBEDDING is the postprocess's unchanged copy of its input
    assert out["EMBEDDING_OUT"].dtype == np.float32
    np.testing.assert_array_equal(out["EMBEDDING_OUT"], served_emb)
    # a classifier that is not constant, so that the comparison means something
    assert len(np.unique(out["CLASS_ID"])) >= 3
    assert np.ptp(out["MATURITY"], axis=0).min() > 0.05
    # stages and review flags: the rule on the reference's outputs, where they are not on an edge
    # (a position within 1e-4 of a stage boundary, a gap within 1e-4 of the margin, a tied class)
    lineages = [lc.classes for lc in curves]
    boundaries = [lc.boundaries for lc in curves]
    class_stage = class_stages(run64.classes, lineages)
    ref = review(ref_proba, ref_proba.argmax(axis=1), ref_t, boundaries, class_stage)
    edge = [np.abs(ref_t[:, [j]] - b[None, :]).min(axis=1) for j, b in enumerate(boundaries)]
    clear_t = np.all(np.array(edge) > 1e-4, axis=0)
    assert clear_t.mean() > 0.95
    assert out["STAGE"].dtype == np.int32 and out["STAGE"].shape == ref_t.shape
    np.testing.assert_array_equal(out["STAGE"][clear_t], ref.stage[clear_t])
    clear = clear_t & decided & (np.abs(ref.gap - DEFAULT_REVIEW_MARGIN) > 1e-4)
    assert out["BORDERLINE"].dtype == np.uint8 and out["BORDERLINE"].shape == (len(images), 1)
    np.testing.assert_array_equal(out["BORDERLINE"][clear, 0], ref.flags[clear])
    assert clear.mean() > 0.9


def test_metrics_count_cells_and_positions(repo64, run64, patches):
    model = fake.load_model(repo64, "smr_postprocess")  # fresh counters
    families = fake.MetricFamily.registry
    images, _ = patches
    emb = onnx_embed(ort_session(repo64 / "smr_backbone/1/model.onnx"), images[:50])
    warmup = np.zeros((4, emb.shape[1]), np.float32)
    responses = _run(model, [emb[:20], warmup, emb[20:]])
    class_id = np.concatenate([responses[0].output("CLASS_ID"), responses[2].output("CLASS_ID")])[:, 0]
    maturity = np.concatenate([responses[0].output("MATURITY"), responses[2].output("MATURITY")])

    counts = families["smr_cells_classified_total"].by_label("class")
    assert set(counts) == set(run64.classes)
    for i, name in enumerate(run64.classes):
        assert counts[name].value() == np.sum(class_id == i)  # the zero (warm-up) rows are not counted
    positions = families["smr_curve_position"].by_label("lineage")
    for li, lineage in enumerate(run64.spec.lineages):
        members = np.isin(class_id, [run64.classes.index(c) for c in lineage.classes])
        assert sorted(positions[lineage.name].observations) == pytest.approx(sorted(maturity[members, li]))
        assert positions[lineage.name].buckets[-1] == 1.0
    seconds = families["smr_postprocess_seconds"].metrics[0]
    assert len(seconds.observations) == 1 and 0 < seconds.observations[0] < 5


def test_bad_requests_get_invalid_argument_and_others_succeed(postprocess, run64):
    good = np.random.default_rng(0).normal(size=(3, 256)).astype(np.float32)
    nan = good.copy()
    nan[1, 7] = np.nan
    bad = {
        "dtype": (fake.request(EMBEDDING=good.astype(np.float64)), "expected data type FP32, got float64"),
        "rank": (fake.request(EMBEDDING=good[0]), "expected shape [batch, 256], got [256]"),
        "size": (fake.request(EMBEDDING=good[:, :255]), "expected shape [batch, 256], got [3, 255]"),
        "missing": (fake.request(IMAGE=good), "input tensor EMBEDDING is missing"),
        "nan": (fake.request(EMBEDDING=nan), "NaN or infinite"),
    }
    requests = [fake.request(EMBEDDING=good)]
    for req, _ in bad.values():
        requests += [req, fake.request(EMBEDDING=good)]
    responses = postprocess.execute(requests)
    assert len(responses) == len(requests)
    for k, (_, message) in enumerate(bad.values()):
        err = responses[1 + 2 * k].error()
        assert err is not None and message in err.message() and "EMBEDDING" in err.message()
        assert err.code() == fake.TritonError.INVALID_ARG
    reference = responses[0].output("PROBABILITIES")
    for r in responses[::2]:
        assert not r.has_error()
        np.testing.assert_array_equal(r.output("PROBABILITIES"), reference)


def test_a_failing_computation_answers_every_request_with_internal(repo64):
    """An exception in the batched computation becomes an INTERNAL error on each readable request of
    the batch (a bad one keeps its own INVALID_ARG); the model keeps serving afterwards."""
    model = fake.load_model(repo64, "smr_postprocess")
    good = np.random.default_rng(1).normal(size=(2, 256)).astype(np.float32)
    compute = model.compute

    def broken(X):
        raise FloatingPointError("overflow in the kernel")

    model.compute = broken
    responses = model.execute(
        [fake.request(EMBEDDING=good), fake.request(EMBEDDING=good[:, :8]), fake.request(EMBEDDING=good)]
    )
    codes = [r.error().code() for r in responses]
    assert codes == [fake.TritonError.INTERNAL, fake.TritonError.INVALID_ARG, fake.TritonError.INTERNAL]
    for r in responses[::2]:
        assert r.error().message() == "smr_postprocess: FloatingPointError: overflow in the kernel"
        assert r.output_tensors() == []
    model.compute = compute
    (after,) = model.execute([fake.request(EMBEDDING=good)])
    assert not after.has_error() and after.output("PROBABILITIES").shape[0] == 2


def test_tampered_repository_is_refused_at_load(repo64, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(repo64, repo)
    curves = repo / "smr_postprocess/1/curves.json"
    curves.write_text(curves.read_text() + " ")
    with pytest.raises(ValueError, match=r"refusing to load.*smr_postprocess/1/curves\.json"):
        fake.load_model(repo, "smr_postprocess")


def test_config_that_disagrees_with_the_artifacts_is_refused(repo64, tmp_path):
    import shutil

    from smr.export.manifest import build_manifest, write_manifest

    repo = tmp_path / "repo"
    shutil.copytree(repo64, repo)
    cfg = repo / "smr_postprocess/config.pbtxt"
    text = cfg.read_text()
    # PROBABILITIES is the first output; give it one column too many
    n = text.index('name: "PROBABILITIES"')
    head, tail = text[:n], text[n:]
    dims_at = tail.index("dims: ")
    end = tail.index("\n", dims_at)
    tail = tail[:dims_at] + f"dims: {int(tail[dims_at + 6 : end]) + 1}" + tail[end:]
    cfg.write_text(head + tail)
    write_manifest(repo, build_manifest(repo, list(MODEL_NAMES)))
    with pytest.raises(ValueError, match="PROBABILITIES"):
        fake.load_model(repo, "smr_postprocess")


def _client_info(repo):
    """The ModelInfo a client builds from the ensemble's config (as the server sends it, JSON)."""
    from google.protobuf import json_format

    from smr.clients.model_info import model_info_from_config
    from smr.export.pbtxt import parse_config

    config = parse_config(repo / "smr/config.pbtxt")
    return model_info_from_config(json_format.MessageToDict(config, preserving_proto_field_name=True))


def _served(model, embeddings: np.ndarray) -> dict[str, np.ndarray]:
    (response,) = _run(model, [embeddings])
    return {name: response.output(name) for name in model._module.OUTPUTS}


def _batch(out: dict[str, np.ndarray], *, served: bool):
    from smr.clients.results import BatchOutputs

    return BatchOutputs(
        out["PROBABILITIES"], out["CLASS_ID"][:, 0], out["MATURITY"], out["CURVE_DISTANCE"],
        stage=out["STAGE"] if served else None, borderline=out["BORDERLINE"][:, 0] if served else None,
    )  # fmt: skip


def test_served_stages_and_flags_are_what_the_client_derives(repo64, postprocess, patches):
    """The same function on the same float32 values: the client's own derivation (an export from
    before STAGE/BORDERLINE) equals the served values exactly, cell for cell, reasons included."""
    from smr.clients.results import cells_from_outputs

    info = _client_info(repo64)
    assert info.serves_review and info.review_margin == DEFAULT_REVIEW_MARGIN
    images, _ = patches
    out = _served(postprocess, onnx_embed(ort_session(repo64 / "smr_backbone/1/model.onnx"), images))
    derived = cells_from_outputs(info, _batch(out, served=False))
    served = cells_from_outputs(info, _batch(out, served=True))
    assert [c.to_dict() for c in served] == [c.to_dict() for c in derived]
    stage = [[lin.classes.index(p.stage) for lin, p in zip(info.lineages, c.lineages, strict=True)]
             for c in derived]  # fmt: skip
    np.testing.assert_array_equal(out["STAGE"], stage)
    np.testing.assert_array_equal(out["BORDERLINE"][:, 0] != 0, [c.borderline for c in derived])
    unsure = [c.borderline_reason.startswith("SVM unsure") for c in derived]
    np.testing.assert_array_equal(out["BORDERLINE"][:, 0] & 1 != 0, unsure)
    # another margin: the client derives the flags again with the same rule (the served stages stay);
    # none is unsure by a margin of 0 (this small run's SVM is unsure of every cell at 0.05)
    strict = cells_from_outputs(info, _batch(out, served=True), margin=0.0)
    assert [c.to_dict() for c in strict] == [
        c.to_dict() for c in cells_from_outputs(info, _batch(out, served=False), margin=0.0)
    ]
    assert not any(c.borderline_reason.startswith("SVM unsure") for c in strict)
    assert sum(c.borderline for c in strict) < sum(c.borderline for c in served)


def _with_margin(repo64, tmp_path, margin: str):
    import shutil

    from smr.export.manifest import build_manifest, write_manifest

    repo = tmp_path / "repo"
    shutil.copytree(repo64, repo)
    cfg = repo / "smr_postprocess/config.pbtxt"
    cfg.write_text(cfg.read_text().replace('string_value: "0.05"', f'string_value: "{margin}"'))
    write_manifest(repo, build_manifest(repo, list(MODEL_NAMES)))
    return repo


def test_the_model_flags_with_its_review_margin_parameter(repo64, tmp_path, postprocess):
    model = fake.load_model(_with_margin(repo64, tmp_path, "0.0"), "smr_postprocess")
    assert model.review_margin == 0.0
    embeddings = np.random.default_rng(2).normal(size=(64, 256)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    strict, default = _served(model, embeddings), _served(postprocess, embeddings)
    np.testing.assert_array_equal(strict["STAGE"], default["STAGE"])
    assert np.count_nonzero(strict["BORDERLINE"] & 1) == 0 < np.count_nonzero(default["BORDERLINE"] & 1)


def test_a_bad_review_margin_is_refused_at_load(repo64, tmp_path):
    with pytest.raises(ValueError, match="parameter review_margin '2'.*margin must lie in"):
        fake.load_model(_with_margin(repo64, tmp_path, "2"), "smr_postprocess")
