"""Backbone runtimes and precisions: parity with PyTorch / FP32, the accuracy check, ``auto``, the manifest.

References are independent of the code under test: PyTorch embeddings (``run64.reference_embeddings``)
for FP32, onnxruntime FP32 for BF16 and INT8, scikit-learn's SVC for the classes.
"""

from __future__ import annotations

import json
import shutil
import warnings

import fake_triton_utils as fake
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from smr.cli import main
from smr.core.svm import RbfSvm
from smr.export.check import check_repository
from smr.export.pbtxt import ServingOptions, parse_config, to_text
from smr.export.precision import (
    PrecisionRefused,
    candidate_precisions,
    choose_precision,
    chosen_cpu_features,
)
from smr.export.quantize import quantize_int8
from smr.export.repository import ExportOptions, export_repository
from smr.serving.triton_models.engines import BackboneEngine, cpu_flags, missing_cpu_features

pytestmark = pytest.mark.slow

# Bounds on the embedding (unit vectors) against FP32, per precision: BF16 rounds the matrix
# products' inputs to 8 bits of mantissa, INT8 (QDQ, stem and projection in float) the conv inputs
# to 8 bits; measured on the trained 96 px PBC run: BF16 mean 0.0024 max 0.010, INT8 mean 0.0038
# max 0.026. The untrained 64 px network of these tests is held to the same bounds, with room.
DISTANCE_BOUNDS = {"bf16": (0.01, 0.05), "int8": (0.02, 0.1)}  # (mean, max) Euclidean distance


@pytest.fixture(scope="module")
def graphs(run64, repo64, tmp_path_factory) -> dict[str, str]:
    """The FP32 graph of ``repo64`` and its INT8 (QDQ) version, calibrated on run64's training images."""
    out = tmp_path_factory.mktemp("graphs")
    fp32 = str(repo64 / "smr_backbone/1/model.onnx")
    calibration, _ = run64.images(run64.train)
    quantize_int8(fp32, out / "model.int8.onnx", calibration)
    return {"fp32": fp32, "int8": str(out / "model.int8.onnx")}


@pytest.fixture(scope="module")
def val(run64):
    images, labels = run64.images(run64.val)
    return images, labels, run64.reference_embeddings(run64.val)


@pytest.fixture(scope="module")
def svm(repo64):
    return RbfSvm.from_dict(json.loads((repo64 / "smr_postprocess/1/svm.json").read_text()))


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_fp32_matches_pytorch_in_every_runtime(engine, graphs, val):
    images, _, torch_reference = val
    embeddings = BackboneEngine(graphs["fp32"], engine, "fp32").embed(images, batch_size=5)
    assert np.max(np.abs(embeddings - torch_reference)) <= 1e-4


@pytest.mark.parametrize(
    ("engine", "precision"),
    [
        ("openvino", "bf16"),
        ("onnxruntime", "int8"),
        pytest.param(
            "openvino",
            "int8",
            marks=pytest.mark.xfail(
                reason="OpenVINO 2026.4 computes this untrained network's QDQ graph wrongly (distance "
                "0.34, onnxruntime 0.01; on the trained PBC run the two agree): export's accuracy check "
                "refuses it, test_a_precision_that_fails_the_check_is_refused_with_the_figures",
                strict=True,
            ),
        ),
    ],
)
def test_reduced_precisions_stay_within_their_bounds_of_fp32(engine, precision, graphs, val):
    images, _, torch_reference = val
    graph = graphs["int8" if precision == "int8" else "fp32"]
    embeddings = BackboneEngine(graph, engine, precision).embed(images)
    distance = np.linalg.norm(embeddings - torch_reference, axis=1)
    mean_bound, max_bound = DISTANCE_BOUNDS[precision]
    assert 0 < distance.mean() <= mean_bound and distance.max() <= max_bound
    # and the two runtimes agree on the same INT8 graph (OpenVINO once computed a quantised stem wrongly)
    if precision == "int8" and engine == "openvino":
        other = BackboneEngine(graph, "onnxruntime", "int8").embed(images)
        assert np.linalg.norm(embeddings - other, axis=1).max() <= max_bound


def test_engines_refuse_what_they_cannot_run(graphs):
    with pytest.raises(ValueError, match="onnxruntime cannot run precision 'bf16'; it runs fp32, int8"):
        BackboneEngine(graphs["fp32"], "onnxruntime", "bf16")
    with pytest.raises(ValueError, match="choose one of: onnxruntime, openvino"):
        BackboneEngine(graphs["fp32"], "tensorflow", "fp32")


def test_auto_candidates_follow_the_cpu_flags():
    avx2_only = {"avx2", "fma"}
    amx = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}
    assert candidate_precisions("openvino", "auto", avx2_only) == ["fp32", "int8"]
    assert candidate_precisions("openvino", "auto", amx) == ["fp32", "bf16", "int8"]
    assert candidate_precisions("onnxruntime", "auto", amx) == ["fp32", "int8"]
    assert candidate_precisions("openvino", "bf16", avx2_only) == ["bf16"]  # asked for: checked, slow
    with pytest.raises(ValueError, match="bf16 needs --runtime openvino"):
        candidate_precisions("python", "bf16", amx)
    assert chosen_cpu_features("bf16", amx) == ("avx512_bf16", "amx_bf16")
    assert chosen_cpu_features("int8", avx2_only) == ()
    assert missing_cpu_features(["avx512_bf16", "amx_bf16"], {"avx512_bf16"}) == ["amx_bf16"]
    assert missing_cpu_features(["avx2"], {"avx2", "sse4_2"}) == []


def _corrupted(path: str, out) -> str:
    """The graph with its largest weight tensor negated: a model that runs, and runs wrong."""
    model = onnx.load(path)
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(largest)
    largest.CopyFrom(numpy_helper.from_array((-array).astype(array.dtype), largest.name))
    onnx.save(model, str(out))
    return str(out)


def test_a_precision_that_fails_the_check_is_refused_with_the_figures(graphs, val, svm, run64, tmp_path):
    images, labels, _ = val
    broken = {"fp32": graphs["fp32"], "int8": _corrupted(graphs["int8"], tmp_path / "broken.onnx")}
    with pytest.raises(PrecisionRefused) as refused:
        choose_precision("openvino", "int8", broken, images, labels, svm=svm, flags=cpu_flags())
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("--precision int8 fails the accuracy check: openvino INT8 vs FP32 on 12")
    assert "macro F1" in message and "same class for" in message and "choose another --precision" in message
    # auto passes over it and takes a precision that passes
    chosen, reports = choose_precision("openvino", "auto", broken, images, labels, svm=svm, flags=cpu_flags())
    failed = {r.precision: r for r in reports if not r.passed}
    assert "int8" in failed and chosen != "int8"
    assert all(r.images_per_s > 0 for r in reports)


def test_a_tiny_threshold_refuses_the_export_and_leaves_nothing(run64, tmp_path):
    options = ExportOptions(
        serving=ServingOptions(runtime="openvino"), precision="bf16", max_f1_loss=-1.0, min_agreement=1.0
    )
    with pytest.raises(PrecisionRefused, match=r"macro F1 loss -?\d+\.\d\d pp > -100\.00 pp"):
        export_repository(run64.path, tmp_path / "repo", options, log=lambda _: None)
    assert not (tmp_path / "repo").exists()


def test_cli_usage_errors_name_the_valid_choices(capsys):
    assert main(["export", "/no/run", "--runtime", "onnxruntime", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("smr export: error:")
        and "it runs fp32, int8 (bf16 needs --runtime openvino or openvino-backend)" in err
    )
    with pytest.raises(SystemExit):
        main(["export", "/no/run", "--precision", "fp16"])
    assert "choose from fp32, bf16, int8, auto" in capsys.readouterr().err.replace("'", "")
    assert main(["export", "/no/run", "--quantize", "int8", "--precision", "bf16"]) == 2
    assert "--quantize int8 and --precision bf16 disagree" in capsys.readouterr().err


@pytest.fixture(scope="module")
def auto_repo(run64, tmp_path_factory):
    repo = tmp_path_factory.mktemp("auto") / "repo"
    assert main(["export", str(run64.path), "--repository", str(repo), "--runtime", "openvino",
                 "--precision", "auto"]) == 0  # fmt: skip
    return repo


def test_auto_export_records_runtime_precision_and_cpu_features(auto_repo, capsys):
    assert check_repository(auto_repo).ok
    manifest = json.loads((auto_repo / "MANIFEST.json").read_text())
    precision = manifest["export"]["precision"]
    assert manifest["export"]["runtime"] == "openvino"
    assert precision["requested"] == "auto" and precision["chosen"] in ("fp32", "bf16", "int8")
    checks = {c["precision"]: c for c in precision["checks"]}
    expected = candidate_precisions("openvino", "auto", cpu_flags())
    assert list(checks) == expected
    passing = [c for c in checks.values() if c["passed"]]
    assert precision["chosen"] == max(passing, key=lambda c: c["images_per_s"])["precision"]
    assert precision["cpu_features"] == list(chosen_cpu_features(precision["chosen"], cpu_flags()))
    params = parse_config(auto_repo / "smr_backbone/config.pbtxt").parameters
    assert params["engine"].string_value == "openvino"
    assert params["precision"].string_value == precision["chosen"]
    assert params["cpu_features"].string_value == ",".join(precision["cpu_features"])
    graph = onnx.load(str(auto_repo / "smr_backbone/1/model.onnx"), load_external_data=False)
    quantized = any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert quantized == (precision["chosen"] == "int8")


def test_served_model_equals_its_engine_and_warns_on_a_cpu_without_the_features(auto_repo, run64, tmp_path):
    images, _ = run64.images(run64.val[:4])
    params = parse_config(auto_repo / "smr_backbone/config.pbtxt").parameters
    engine = BackboneEngine(
        auto_repo / "smr_backbone/1/model.onnx", "openvino", params["precision"].string_value
    )
    fake.Logger.lines.clear()
    model = fake.load_model(auto_repo, "smr_backbone")
    (response,) = model.execute([fake.request(IMAGE=images)])
    np.testing.assert_allclose(response.output("EMBEDDING"), engine(images), atol=1e-6)
    assert not [line for line in fake.Logger.lines if "lacks" in line]

    # the same repository, exported "for" a CPU feature this one lacks, resealed
    repo = tmp_path / "repo"
    shutil.copytree(auto_repo, repo)
    path = repo / "smr_backbone/config.pbtxt"
    config = parse_config(path)
    recorded = [f for f in config.parameters["cpu_features"].string_value.split(",") if f]
    config.parameters["cpu_features"].string_value = ",".join([*recorded, "no_such_flag"])
    path.write_text(to_text(config))
    _reseal(repo)
    fake.Logger.lines.clear()
    fake.load_model(repo, "smr_backbone")
    warned = [line for line in fake.Logger.lines if line.startswith("W ") and "lacks no_such_flag" in line]
    assert len(warned) == 1 and "--precision auto" in warned[0]


def _reseal(repo) -> None:
    from smr.export.manifest import build_manifest, read_manifest, write_manifest

    doc = read_manifest(repo)
    info = {k: v for k, v in doc.items() if k not in ("schema", "version", "models", "files")}
    write_manifest(repo, build_manifest(repo, doc["models"], **info))


def test_auto_on_onnxruntime_reports_sklearn_f1(run64, tmp_path):
    """The FP32 macro F1 of the check equals scikit-learn's SVC on PyTorch embeddings."""
    from sklearn.metrics import f1_score

    options = ExportOptions(serving=ServingOptions(runtime="python"), precision="auto")
    result = export_repository(run64.path, tmp_path / "repo", options, log=lambda _: None)
    assert [r.precision for r in result.precision_reports] == ["fp32", "int8"]
    images, labels = run64.images(run64.val)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        predicted = run64.svc.predict_proba(run64.reference_embeddings(run64.val).astype(np.float64))
    expected = f1_score(labels, predicted.argmax(axis=1), labels=sorted(set(labels)), average="macro")
    for report in result.precision_reports:
        assert report.accuracy.macro_f1_fp32 == pytest.approx(expected, abs=1e-9)
    assert result.precision in ("fp32", "int8")
