"""The ONNX backbone: parity with PyTorch at 64 and 224 px, the python-runtime model, failure modes."""

from __future__ import annotations

import json

import fake_triton_utils as fake
import numpy as np
import pytest
import torch
from export_helpers import torch_reference_embeddings

from smr.export.onnx_backbone import (
    PARITY_ATOL,
    ExportError,
    ServingBackbone,
    check_onnx,
    check_parity,
    onnx_embed,
    ort_session,
)
from smr.train.rundir import load_run_model


@pytest.mark.parametrize(
    ("run_name", "repo_name", "size"), [("run64", "repo64", 64), ("run224", "repo224_python", 224)]
)
def test_parity_with_pytorch_on_real_and_random_images(run_name, repo_name, size, request):
    run, repo = request.getfixturevalue(run_name), request.getfixturevalue(repo_name)
    manifest = json.loads((repo / "MANIFEST.json").read_text())
    parity = manifest["export"]["parity"]
    assert parity["real_images"] > 0 and parity["random_images"] > 0
    assert parity["max_abs_diff"] <= PARITY_ATOL

    # independently: the run's network through training's normalize() vs onnxruntime on the file
    real, _ = run.images(run.val[:6])
    noise = np.random.default_rng(1).integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)
    images = np.concatenate([real, noise])
    served = onnx_embed(ort_session(repo / "smr_backbone/1/model.onnx"), images)
    reference = torch_reference_embeddings(run, images)
    assert served.shape == (len(images), 256) and served.dtype == np.float32
    assert np.abs(served - reference).max() <= PARITY_ATOL
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)  # L2-normalised
    assert check_onnx(repo / "smr_backbone/1/model.onnx", image_size=size) == (21, 256)


def test_dynamic_batch_dimension(repo64):
    session = ort_session(repo64 / "smr_backbone/1/model.onnx")
    images = np.random.default_rng(2).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    whole = onnx_embed(session, images)
    one_by_one = np.concatenate([onnx_embed(session, images[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)


def test_parity_failure_says_by_how_much(run64, repo64):
    """A graph that does not compute the network (other normalisation) fails the parity check."""
    model = load_run_model(run64.path)
    wrong = ServingBackbone(model, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    real, _ = run64.images(run64.val[:2])
    expected = r"max abs difference of the embedding \d\.\d+e[-+]\d+ > tolerance 1e-04"
    with pytest.raises(ExportError, match=expected):
        check_parity(wrong, repo64 / "smr_backbone/1/model.onnx", real, image_size=64, random_images=2)


def test_broken_onnx_file_is_rejected(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(Exception, match="model.onnx"):
        check_onnx(path)


def test_python_runtime_model_matches_onnxruntime(repo224_python, run224):
    model = fake.load_model(repo224_python, "smr_backbone")
    images, _ = run224.images(run224.val[:3])
    noise = np.random.default_rng(3).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    responses = model.execute([fake.request(IMAGE=images), fake.request(IMAGE=noise)])
    assert [r.has_error() for r in responses] == [False, False]
    served = np.concatenate([r.output("EMBEDDING") for r in responses])
    session = ort_session(repo224_python / "smr_backbone/1/model.onnx")
    direct = onnx_embed(session, np.concatenate([images, noise]))
    np.testing.assert_allclose(served, direct, atol=1e-6)
    assert responses[0].output("EMBEDDING").shape == (3, 256)


def test_python_runtime_model_rejects_bad_images(repo224_python):
    model = fake.load_model(repo224_python, "smr_backbone")
    ok = np.zeros((1, 224, 224, 3), np.uint8)
    bad = {
        "dtype": (ok.astype(np.float32), "expected data type UINT8, got float32"),
        "size": (np.zeros((1, 64, 64, 3), np.uint8), "expected shape [batch, 224, 224, 3], got [1, 64, 64"),
        "rank": (ok[0], "got [224, 224, 3]"),
        "channels": (np.zeros((1, 224, 224, 4), np.uint8), "got [1, 224, 224, 4]"),
    }
    responses = model.execute([fake.request(IMAGE=x) for x, _ in bad.values()] + [fake.request(IMAGE=ok)])
    for response, (_, message) in zip(responses, bad.values(), strict=False):
        assert response.has_error() and message in response.error().message()
        assert "IMAGE" in response.error().message()
        assert response.error().code() == fake.TritonError.INVALID_ARG
    assert not responses[-1].has_error() and responses[-1].output("EMBEDDING").shape == (1, 256)


def test_serving_backbone_matches_training_normalisation(run64):
    """The wrapper's float graph equals normalize() + SMRNet, before any export."""
    from smr.train.dataset import normalize

    model = load_run_model(run64.path)
    wrapper = ServingBackbone(model, run64.config.mean, run64.config.std).eval()
    images = torch.from_numpy(np.random.default_rng(4).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8))
    with torch.inference_mode():
        got = wrapper(images)
        want = model(normalize(images.permute(0, 3, 1, 2), run64.config.mean, run64.config.std))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
