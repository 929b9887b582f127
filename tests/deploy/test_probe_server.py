"""The pod's probe script and lock-down flags against a real tritonserver (the embedded one).

The server runs a stand-in ``smr`` model (python backend, the ensemble's input and a
PROBABILITIES output) that can be told, through a file beside it, to answer NaNs or fail, and
starts with the Deployment's own lock-down flags (the admin key replaced by a random one).
"""

from __future__ import annotations

import inspect
import json
import secrets
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from deploy_helpers import KUBERNETES, REPO_ROOT, build, one

from smr.serving.launcher import TritonProcess

PROBE = KUBERNETES / "probe" / "probe.py"
LOCKDOWN_FLAGS = ("--model-control-mode", "--grpc-restricted-protocol", "--http-restricted-api")

MODEL = textwrap.dedent(
    """
    import os

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.mode_file = os.path.join(args["model_repository"], "mode")

        def execute(self, requests):
            mode = open(self.mode_file).read().strip() if os.path.exists(self.mode_file) else "ok"
            responses = []
            for request in requests:
                x = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "IMAGE"))
                if mode == "fail":
                    error = pb_utils.TritonError("stand-in failure")
                    responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                    continue
                p = np.full((x.shape[0], 3), np.nan if mode == "nan" else 1 / 3, dtype=np.float32)
                cls = np.zeros((x.shape[0], 1), dtype=np.int32)
                outputs = [pb_utils.Tensor.from_dlpack("PROBABILITIES", p),
                           pb_utils.Tensor.from_dlpack("CLASS_ID", cls)]
                responses.append(pb_utils.InferenceResponse(outputs))
            return responses
    """
)
CONFIG = textwrap.dedent(
    """
    name: "smr"
    backend: "python"
    max_batch_size: 4
    input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 24, 16, 3 ] } ]
    output [
      { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 3 ] },
      { name: "CLASS_ID" data_type: TYPE_INT32 dims: [ 1 ] }
    ]
    instance_group [ { kind: KIND_CPU count: 1 } ]
    """
)
ADMIN_KEY = secrets.token_hex(16)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton matches gRPC restriction headers under this prefix
# the launcher's own lock-down off and HTTP on (the pod's probe endpoint): the Deployment's flags
# are under test (older launchers had neither option: HTTP on, no restrictions)
LAUNCHER_OPTIONS = {
    key: value
    for key, value in {"http": True, "restrict_apis": False}.items()
    if key in inspect.signature(TritonProcess).parameters
}


def lockdown_args() -> list[str]:
    (container,) = one(build("base"), "Deployment")["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if a.split("=", 1)[0] in LOCKDOWN_FLAGS]
    assert len(args) == len(LOCKDOWN_FLAGS)
    return [a.replace("$(SMR_ADMIN_KEY)", ADMIN_KEY) for a in args]


def admin_header() -> str:
    (arg,) = [a for a in lockdown_args() if a.startswith("--http-restricted-api=")]
    return arg.rsplit(":", 1)[1].split("=", 1)[0]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    repo = tmp_path_factory.mktemp("probe-repo")
    (repo / "smr" / "1").mkdir(parents=True)
    (repo / "smr" / "config.pbtxt").write_text(CONFIG)
    (repo / "smr" / "1" / "model.py").write_text(MODEL)
    server = TritonProcess(
        repo, check_manifest=False, ready_timeout=180, server_args=lockdown_args(), **LAUNCHER_OPTIONS
    )
    with server:
        yield server, repo / "smr" / "mode"


def run_probe(check: str, url: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(PROBE), check, "--url", url, "--timeout", "20"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def http(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"{}" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.integration
def test_probes_pass_on_a_serving_model_and_fail_on_a_broken_one(stand_in):
    server, mode = stand_in
    for check in ("live", "ready"):
        done = run_probe(check, server.http_url)
        assert done.returncode == 0, done.stderr
    mode.write_text("nan")
    done = run_probe("ready", server.http_url)
    assert done.returncode == 1 and "PROBABILITIES is not finite" in done.stderr, done.stderr
    mode.write_text("fail")
    done = run_probe("ready", server.http_url)
    assert done.returncode == 1 and "stand-in failure" in done.stderr, done.stderr
    assert run_probe("live", server.http_url).returncode == 0  # alive, but not ready
    mode.unlink()
    assert run_probe("ready", server.http_url).returncode == 0


@pytest.mark.integration
def test_restricted_apis_need_the_admin_header(stand_in):
    server, _ = stand_in
    header = {admin_header(): ADMIN_KEY}
    for method, path in (
        ("POST", "/v2/repository/index"),
        ("GET", "/v2/logging"),
        ("GET", "/v2/trace/setting"),
    ):
        status, body = http(server.http_url + path, method)
        assert status == 403 and "restricted" in body.lower(), (path, status, body)
        status, body = http(server.http_url + path, method, header)
        assert status == 200, (path, status, body)
    status, body = http(server.http_url + "/v2/repository/index", "POST", {admin_header(): "wrong"})
    assert status == 403
    # inference, metadata and health stay open: the probe needs no key
    assert http(server.http_url + "/v2/models/smr")[0] == 200

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    refused = (None, {admin_header(): ADMIN_KEY}, {GRPC_HEADER_PREFIX + admin_header(): "wrong"})
    for headers in refused:
        with pytest.raises(InferenceServerException, match="(?i)restricted|permission"):
            client.get_model_repository_index(headers=headers)
    grpc_header = {GRPC_HEADER_PREFIX + admin_header(): ADMIN_KEY}
    assert [m.name for m in client.get_model_repository_index(headers=grpc_header).models] == ["smr"]
    assert f"`{GRPC_HEADER_PREFIX + admin_header()}`" in (REPO_ROOT / "docs" / "scaling.md").read_text()
    assert client.is_model_ready("smr")  # health and metadata need no key
    client.close()


@pytest.mark.integration
def test_no_model_control_even_with_the_admin_header(stand_in):
    server, _ = stand_in
    header = {admin_header(): ADMIN_KEY}
    status, body = http(server.http_url + "/v2/repository/models/smr/unload", "POST", header)
    assert status != 200 and "load / unload is not allowed" in body, (status, body)
    assert run_probe("ready", server.http_url).returncode == 0
    status, body = http(server.http_url + "/v2/repository/index", "POST", header)
    assert [(m["name"], m.get("state")) for m in json.loads(body)] == [("smr", "READY")]


def test_probe_fails_without_a_server():
    from smr.serving.launcher import free_port

    done = run_probe("ready", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "smr probe ready:" in done.stderr
    done = run_probe("live", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "smr probe live:" in done.stderr
