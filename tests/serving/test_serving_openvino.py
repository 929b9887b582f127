"""A real tritonserver on ``smr export --runtime openvino --precision bf16``: served equals offline."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from serving_helpers import SMR, OfflinePipeline, pbc_dev_dir

from smr.serving.launcher import TritonProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 64


@pytest.fixture(scope="module")
def openvino_repository(tmp_path_factory):
    import sys

    from serving_helpers import REPO_ROOT

    sys.path.append(str(REPO_ROOT / "tests" / "export"))
    from export_helpers import TWO_LINEAGES, make_run

    tmp = tmp_path_factory.mktemp("openvino")
    run = make_run(
        tmp / "run", pbc_dev_dir(), spec=TWO_LINEAGES, image_size=SIZE, n_train=4, n_val=2, real_svm=False
    )
    repo = tmp / "repository"
    # the accuracy check is about the run's images (tests/export); here only the serving path counts
    cmd = [SMR, "export", str(run.path), "--repository", str(repo), "--runtime", "openvino",
           "--precision", "bf16", "--max-f1-loss", "1", "--min-agreement", "0",
           "--max-batch-size", "16"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"smr export failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return repo


@pytest.fixture(scope="module")
def server(openvino_repository):
    with TritonProcess(openvino_repository, ready_timeout=300) as process:
        yield process


def _offline(repo, images: np.ndarray) -> dict[str, np.ndarray]:
    """The same engine in this process, then the numpy SVM and curves of the repository."""
    from smr.core.curves_json import curves_from_json, project_all
    from smr.core.svm import RbfSvm
    from smr.serving.triton_models.engines import BackboneEngine

    post = repo / "smr_postprocess" / "1"
    svm = RbfSvm.from_dict(json.loads((post / "svm.json").read_text()))
    curves = curves_from_json(json.loads((post / "curves.json").read_text()))
    embedding = BackboneEngine(repo / "smr_backbone/1/model.onnx", "openvino", "bf16")(images)
    probabilities = svm.predict_proba(embedding.astype(np.float64))
    t, distance = project_all(curves, embedding.astype(np.float64))
    return {"EMBEDDING": embedding, "PROBABILITIES": probabilities, "MATURITY": t, "CURVE_DISTANCE": distance}


def test_served_openvino_bf16_equals_offline(server, openvino_repository):
    import tritonclient.grpc as grpcclient

    outputs = ("EMBEDDING", "PROBABILITIES", "CLASS_ID", "MATURITY", "CURVE_DISTANCE")
    fp32 = OfflinePipeline(openvino_repository)  # onnxruntime FP32: the independent reference
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        config = client.get_model_config("smr_backbone", as_json=True)["config"]
        assert config["backend"] == "python"
        assert config["parameters"]["engine"]["string_value"] == "openvino"
        assert config["parameters"]["precision"]["string_value"] == "bf16"
        for n, seed in ((1, 0), (5, 1), (16, 2)):
            images = np.random.default_rng(seed).integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
            inputs = [grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")]
            inputs[0].set_data_from_numpy(images)
            requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
            result = client.infer("smr", inputs, outputs=requested)
            served = {name: result.as_numpy(name) for name in outputs}
            offline = _offline(openvino_repository, images)
            for name in ("EMBEDDING", "PROBABILITIES", "MATURITY", "CURVE_DISTANCE"):
                np.testing.assert_allclose(served[name], offline[name], rtol=0, atol=1e-5, err_msg=name)
            np.testing.assert_array_equal(served["CLASS_ID"][:, 0], offline["PROBABILITIES"].argmax(axis=1))
            # BF16 against onnxruntime FP32: within the bound of tests/export/test_export_precision.py
            distance = np.linalg.norm(served["EMBEDDING"] - fp32(images)["EMBEDDING"], axis=1)
            assert 0 < distance.max() <= 0.05
