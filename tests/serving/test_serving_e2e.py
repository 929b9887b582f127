"""A real tritonserver on a real ``smr export``: results, concurrency, bad requests, metrics."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest
from serving_helpers import metric_samples, scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTPUTS = ("PROBABILITIES", "CLASS_ID", "MATURITY", "CURVE_DISTANCE", "STAGE", "BORDERLINE", "EMBEDDING")
TOLERANCE = {"EMBEDDING": 1e-5, "PROBABILITIES": 1e-5, "MATURITY": 1e-5, "CURVE_DISTANCE": 1e-5}


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _infer(client, images: np.ndarray, outputs=OUTPUTS) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    inputs = [grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")]
    inputs[0].set_data_from_numpy(images)
    result = client.infer("smr", inputs, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def _assert_matches_offline(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, tol in TOLERANCE.items():
        if name in served:
            assert served[name].shape == expected[name].shape, name
            np.testing.assert_allclose(served[name], expected[name], rtol=0, atol=tol, err_msg=name)
    if "CLASS_ID" in served:
        assert served["CLASS_ID"].dtype == np.int32 and served["CLASS_ID"].shape == expected["CLASS_ID"].shape
        # the class is the argmax; where the two best probabilities tie within float noise either may win
        top2 = np.sort(expected["PROBABILITIES"], axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-4
        np.testing.assert_array_equal(served["CLASS_ID"][clear], expected["CLASS_ID"][clear])
    # the stages and review flags, where no float rounding can tip them (see OfflinePipeline)
    clear = expected["review_clear"]
    for name, dtype in (("STAGE", np.int32), ("BORDERLINE", np.uint8)):
        if name in served:
            assert served[name].dtype == dtype and served[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(served[name][clear], expected[name][clear], err_msg=name)


@pytest.fixture(scope="module")
def client(smr_server):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(smr_server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def geometry(client):
    config = client.get_model_config("smr", as_json=True)["config"]
    (image,) = config["input"]
    return int(image["dims"][0]), int(config["max_batch_size"])


def test_served_ensemble_is_224px_with_a_batch_limit(geometry):
    size, max_batch = geometry
    assert size == 224 and max_batch >= 8


@pytest.mark.parametrize("n", ["single", "several", "max_batch_size"])
def test_results_equal_the_offline_pipeline(client, geometry, offline_pipeline, n):
    size, max_batch = geometry
    count = {"single": 1, "several": 5, "max_batch_size": max_batch}[n]
    images = _images(count, size, seed=count)
    _assert_matches_offline(_infer(client, images), offline_pipeline(images))


def test_the_offline_reference_is_the_pytorch_model(client, geometry, exported_repository, offline_pipeline):
    """The reference's own reference: the run's PyTorch network behind the serving input contract
    gives the served embedding within the export's parity tolerance, and so every served output."""
    import torch

    from smr.export.onnx_backbone import ServingBackbone
    from smr.train.rundir import load_run

    run = load_run(exported_repository.parent / "run")  # export_untrained_repository's run
    backbone = ServingBackbone(run.model, run.config.mean, run.config.std).eval()
    images = _images(3, geometry[0], seed=21)
    with torch.no_grad():
        reference = backbone(torch.from_numpy(images)).numpy()
    served = _infer(client, images)
    np.testing.assert_allclose(served["EMBEDDING"], reference, rtol=0, atol=1e-4)
    _assert_matches_offline(served, offline_pipeline(images))


def test_a_client_gets_only_the_outputs_it_asks_for(client, geometry, offline_pipeline):
    images = _images(2, geometry[0], seed=11)
    served = _infer(client, images, outputs=("MATURITY",))
    assert set(served) == {"MATURITY"}
    _assert_matches_offline(served, offline_pipeline(images))


def test_concurrent_clients_each_get_their_own_results(smr_server, geometry, offline_pipeline):
    """Several clients at once: the dynamic batcher merges their requests; answers must not mix."""
    import tritonclient.grpc as grpcclient

    size, max_batch = geometry
    # three clients, two requests each, batches of 1-6 cells (distinct images per request)
    plan = {w: [(1 + (w * 3 + k * 5) % min(6, max_batch), 100 * w + k) for k in range(2)] for w in range(3)}
    results, errors = {}, []
    barrier = threading.Barrier(len(plan))

    def work(worker: int) -> None:
        try:
            with grpcclient.InferenceServerClient(smr_server.grpc_url) as c:
                barrier.wait(timeout=60)
                for n, seed in plan[worker]:
                    results[seed] = _infer(c, _images(n, size, seed))
        except Exception as exc:  # reported below with the worker's id
            errors.append((worker, exc))

    threads = [threading.Thread(target=work, args=(w,)) for w in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == sum(len(v) for v in plan.values())
    for requests in plan.values():
        for n, seed in requests:
            _assert_matches_offline(results[seed], offline_pipeline(_images(n, size, seed)))


# --------------------------------------------------------------------------------------------
# bad requests


def _bad_requests(size: int, max_batch: int):
    """(kind, build(grpcclient) -> (model, inputs, outputs), expected words in the error)."""
    good = _images(1, size, seed=0)

    def image(array, name="IMAGE", dtype="UINT8", shape=None):
        def build(g):
            inp = g.InferInput(name, list(array.shape), dtype)
            inp.set_data_from_numpy(array)
            if shape is not None:
                inp.set_shape(shape)
            return inp

        return build

    def request(*inputs, model="smr", outputs=None, version=""):
        return lambda g: (
            model,
            [b(g) for b in inputs],
            [g.InferRequestedOutput(o) for o in outputs or []],
            version,
        )

    embedding = np.zeros((1, 256), np.float32)
    embedding[0, 0] = np.nan
    return [
        (
            "wrong dtype",
            request(image(good.astype(np.float32), dtype="FP32")),
            ["IMAGE", "data-type", "UINT8"],
        ),
        ("wrong rank", request(image(good[..., 0])), ["unexpected shape", "IMAGE"]),
        (
            "wrong height and width",
            request(image(_images(1, size // 2, 1))),
            ["unexpected shape", f"{size},{size}"],
        ),
        (
            "four channels",
            request(image(np.zeros((1, size, size, 4), np.uint8))),
            ["unexpected shape", "IMAGE"],
        ),
        ("batch over max_batch_size", request(image(_images(max_batch + 1, size, 2))), [f"<= {max_batch}"]),
        ("empty batch", request(image(np.zeros((0, size, size, 3), np.uint8))), ["byte size", "IMAGE"]),
        ("missing input", request(), ["missing required input", "IMAGE"]),
        ("wrong input name", request(image(good, name="PIXELS")), ["unexpected inference input", "PIXELS"]),
        ("extra input", request(image(good), image(good, name="MASK")), ["2 inputs", "MASK"]),
        ("unknown output", request(image(good), outputs=["GRADE"]), ["unexpected inference output", "GRADE"]),
        (
            "shape does not match the data",
            request(image(good, shape=[2, size, size, 3])),
            ["byte size mismatch"],
        ),
        (
            "string tensor",
            request(image(np.array([[b"x"]], dtype=np.object_), dtype="BYTES")),
            ["BYTES", "UINT8"],
        ),
        ("unknown model version", request(image(good), version="9"), ["version 9", "not found"]),
        (
            "NaN embedding to the postprocess",
            request(lambda g: _embedding_input(g, embedding), model="smr_postprocess", outputs=["CLASS_ID"]),
            ["EMBEDDING", "NaN"],
        ),
    ]


def _embedding_input(g, embedding):
    inp = g.InferInput("EMBEDDING", list(embedding.shape), "FP32")
    inp.set_data_from_numpy(embedding)
    return inp


def test_bad_requests_are_rejected_clearly_and_the_server_carries_on(client, geometry, offline_pipeline):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    size, max_batch = geometry
    cases = _bad_requests(size, max_batch)
    assert len(cases) >= 10
    valid = _images(2, size, seed=5)
    expected = offline_pipeline(valid)
    for kind, build, words in cases:
        model, inputs, outputs, version = build(grpcclient)
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs, outputs=outputs or None, model_version=version)
        message = info.value.message()
        wanted = "StatusCode.NOT_FOUND" if "version" in kind else "StatusCode.INVALID_ARGUMENT"
        assert info.value.status() == wanted, f"{kind}: {info.value}"
        for word in words:
            assert word.lower() in message.lower(), f"{kind}: {word!r} not in {message!r}"
        # a valid request right after still succeeds, with the right answer
        assert client.is_server_ready() and client.is_model_ready("smr"), kind
        _assert_matches_offline(_infer(client, valid), expected)


# --------------------------------------------------------------------------------------------
# metrics on the metrics port


def _settled_scrape(url: str) -> str:
    """The metrics once the counters stop moving (Triton counts a request just after answering it)."""
    previous = scrape(url)
    for _ in range(20):
        time.sleep(0.3)
        current = scrape(url)
        if metric_samples(current, "nv_inference_request_success") == metric_samples(
            previous, "nv_inference_request_success"
        ) and metric_samples(current, "smr_cells_classified_total") == metric_samples(
            previous, "smr_cells_classified_total"
        ):
            return current
        previous = current
    return previous


def test_metrics_count_requests_cells_and_classes(smr_server, client, geometry):
    size, _ = geometry
    before = _settled_scrape(smr_server.metrics_url)
    batches = [_images(n, size, seed=900 + n) for n in (3, 6, 1)]
    predicted = Counter()
    for images in batches:
        class_id = _infer(client, images, outputs=("CLASS_ID",))["CLASS_ID"][:, 0]
        predicted.update(int(c) for c in class_id)
    after = _settled_scrape(smr_server.metrics_url)

    def delta(name: str, **labels) -> float:
        def value(text):
            return sum(v for k, v in metric_samples(text, name).items() if labels.items() <= dict(k).items())

        return value(after) - value(before)

    assert delta("nv_inference_request_success", model="smr") == len(batches)
    assert delta("nv_inference_count", model="smr_backbone") == sum(len(b) for b in batches)
    assert delta("nv_inference_count", model="smr_postprocess") == sum(len(b) for b in batches)
    assert delta("nv_inference_request_summary_us_count", model="smr") == len(batches)

    config = client.get_model_config("smr", as_json=True)["config"]
    import json

    classes = json.loads(config["parameters"]["classes"]["string_value"])
    counted = {c: delta("smr_cells_classified_total", **{"class": c}) for c in classes}
    assert counted == {classes[i]: float(predicted.get(i, 0)) for i in range(len(classes))}
    assert delta("smr_postprocess_seconds_count") >= 1
