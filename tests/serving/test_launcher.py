"""The launcher: finding tritonserver, reading repositories, starting, failing and stopping a real server."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import SMR, metric_samples, port_is_open, scrape, write_toy_model

from smr.serving.launcher import (
    ProbeError,
    RepositoryError,
    TritonNotFoundError,
    TritonProcess,
    TritonStartError,
    find_tritonserver,
    python_backend_shm,
    pytriton_server_dir,
    read_repository,
    verify_manifest,
)


def _fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --------------------------------------------------------------------------------------------
# Triton's messages

STUB_DEAD = (
    "Failed to process the request(s) for model 'smr_backbone_0_0', message: "
    "Stub process 'smr_backbone_0_0' is not healthy."
)


def test_the_probe_and_the_clients_read_triton_s_messages_alike():
    """A dead stub restarts the server (the supervisor) and is retried (the clients): one test of
    Triton's text, in smr.serving.triton_messages, serves both."""
    from smr.clients import retry
    from smr.serving import triton_messages

    assert ProbeError(STUB_DEAD, "StatusCode.INTERNAL").stub_died
    assert not ProbeError("Request for unknown model: 'smr' is not found", "StatusCode.NOT_FOUND").stub_died
    assert triton_messages.is_stub_unhealthy(STUB_DEAD)
    assert retry.is_stub_unhealthy is triton_messages.is_stub_unhealthy
    assert triton_messages.is_unknown_model("Request for unknown model: 'smr' is not found")
    assert not triton_messages.is_unknown_model(STUB_DEAD)


# --------------------------------------------------------------------------------------------
# finding the server


def test_tritonserver_precedence_explicit_env_path_wheel(tmp_path, monkeypatch):
    explicit = _fake_binary(tmp_path / "explicit" / "tritonserver")
    from_env = _fake_binary(tmp_path / "env" / "tritonserver")
    on_path = _fake_binary(tmp_path / "path" / "tritonserver")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TRITONSERVER", str(from_env))

    assert find_tritonserver(explicit).executable == explicit
    assert find_tritonserver().executable == from_env
    monkeypatch.delenv("TRITONSERVER")
    found = find_tritonserver()
    assert (found.executable, found.source, found.is_embedded) == (on_path, "PATH", False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    wheel = find_tritonserver()
    assert wheel.is_embedded and wheel.executable == pytriton_server_dir() / "bin" / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert wheel.stub.parent.name == version and wheel.stub.is_file()


def test_tritonserver_that_is_not_executable_is_named(tmp_path):
    missing = tmp_path / "nope" / "tritonserver"
    with pytest.raises(TritonNotFoundError, match=re.escape(str(missing))):
        find_tritonserver(missing)


# --------------------------------------------------------------------------------------------
# reading the repository


def test_read_repository_lists_backends_and_sizes_shared_memory(tmp_path):
    repo = write_toy_model(tmp_path, "toy")
    (repo / "native" / "1").mkdir(parents=True)
    (repo / "native" / "config.pbtxt").write_text(
        'name: "native"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 224, 224, 3 ] } ]\n'
        'output [ { name: "E" data_type: TYPE_FP32 dims: [ 8 ] } ]\n'
    )
    info = read_repository(repo, "toy")
    assert info.models == {"toy": "python", "native": "onnxruntime"}
    assert info.max_batch_size == 8
    # only python models talk through the shared memory: 8 requests x 4 floats, not the ONNX images
    assert info.largest_batch_bytes == 8 * 4 * 4
    default, growth = python_backend_shm(info)
    assert default >= 2 * info.largest_batch_bytes + 16 * 2**20 and default % 2**20 == 0
    assert growth >= info.largest_batch_bytes and growth % 2**20 == 0


def test_shared_memory_holds_two_full_image_batches(tmp_path):
    (tmp_path / "bb" / "1").mkdir(parents=True)
    (tmp_path / "bb" / "config.pbtxt").write_text(
        'name: "bb"\nbackend: "python"\nmax_batch_size: 64\n'
        'input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 224, 224, 3 ] } ]\n'
        'output [ { name: "E" data_type: TYPE_FP32 dims: [ 256 ] } ]\n'
    )
    info = read_repository(tmp_path, "bb")
    batch = 64 * 224 * 224 * 3
    assert info.largest_batch_bytes == batch
    default, growth = python_backend_shm(info)
    assert 2 * batch < default <= 2 * batch + 17 * 2**20
    assert batch <= growth < batch + 2**20


def test_unparsable_config_is_named(tmp_path):
    write_toy_model(tmp_path, "toy")
    (tmp_path / "toy" / "config.pbtxt").write_text('name: "toy"\nmax_batch_size: "eight"\n')
    with pytest.raises(RepositoryError, match=r"toy/config.pbtxt is not a valid Triton model config"):
        read_repository(tmp_path, "toy")


def test_missing_model_lists_what_is_there(tmp_path):
    write_toy_model(tmp_path, "toy")
    with pytest.raises(RepositoryError, match=r"has no model 'smr'; it has: toy"):
        read_repository(tmp_path)
    with pytest.raises(RepositoryError, match="does not exist"):
        read_repository(tmp_path / "absent")


def test_embedded_server_refuses_native_backends_before_starting(tmp_path):
    write_toy_model(tmp_path, "toy")
    (tmp_path / "smr_backbone" / "1").mkdir(parents=True)
    (tmp_path / "smr_backbone" / "config.pbtxt").write_text(
        'name: "smr_backbone"\nplatform: "onnxruntime_onnx"\n'
    )
    server = TritonProcess(tmp_path, model="toy", check_manifest=False, tritonserver=None)
    with pytest.raises(RepositoryError, match=r"smr_backbone \(onnxruntime\).*--runtime python"):
        server.start()
    assert server.pid is None


def test_manifest_is_required_and_checked(tmp_path):
    from smr.export.manifest import build_manifest, write_manifest

    repo = write_toy_model(tmp_path, "toy")
    with pytest.raises(RepositoryError, match="no MANIFEST.json"):
        verify_manifest(repo)
    write_manifest(repo, build_manifest(repo, ["toy"]))
    verify_manifest(repo)
    model_py = repo / "toy" / "1" / "model.py"
    model_py.write_text(model_py.read_text() + "\n# edited\n")
    with pytest.raises(RepositoryError, match=r"toy/1/model.py"):
        verify_manifest(repo)
    with pytest.raises(RepositoryError, match=r"toy/1/model.py"):
        TritonProcess(repo, model="toy").start()  # the launcher refuses before starting anything


# --------------------------------------------------------------------------------------------
# a real server


@pytest.mark.integration
def test_toy_server_answers_on_loopback_and_exposes_metrics(toy_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(toy_server.grpc_url)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    inputs = [grpcclient.InferInput("X", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    y = client.infer("toy", inputs).as_numpy("Y")
    np.testing.assert_array_equal(y, x * 2 + 1)

    # Triton publishes counters asynchronously: poll briefly for the request to show up.
    deadline = time.monotonic() + 15
    while True:
        text = scrape(toy_server.metrics_url)
        success = metric_samples(text, "nv_inference_request_success")
        if success.get((("model", "toy"), ("version", "1")), 0) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert success[(("model", "toy"), ("version", "1"))] >= 1
    # latency quantiles are on (--metrics-config summary_latencies=true)
    quantiles = metric_samples(text, "nv_inference_request_summary_us")
    assert {dict(k)["quantile"] for k in quantiles if dict(k)["model"] == "toy"} >= {"0.5", "0.95", "0.99"}
    for url in (toy_server.grpc_url, toy_server.metrics_url):
        assert "127.0.0.1:" in url
    assert toy_server.http_url is None  # HTTP is off unless asked for


@pytest.mark.integration
def test_stop_ends_the_server_and_its_stubs_and_keeps_the_log(tmp_path):
    repo = write_toy_model(tmp_path, "toy")
    server = TritonProcess(repo, model="toy", check_manifest=False).start()
    pgid, grpc_port = server.pid, server.ports["grpc"]
    assert port_is_open(grpc_port)
    code = server.stop()
    assert code == 0, server.log()[-2000:]
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # neither tritonserver nor a python stub is left
    assert not port_is_open(grpc_port)
    assert "successfully loaded 'toy'" in server.log()


@pytest.mark.integration
def test_model_that_fails_to_load_fails_fast_with_the_server_log(tmp_path):
    repo = write_toy_model(tmp_path, "toy", fail="toy model refuses: marker-8c1f")
    server = TritonProcess(repo, model="toy", check_manifest=False, ready_timeout=120)
    started = time.monotonic()
    with pytest.raises(TritonStartError) as info:
        server.start()
    assert time.monotonic() - started < 60  # exits on the error, does not wait for the timeout
    message = str(info.value)
    assert "marker-8c1f" in message and "exited with code" in message
    assert not server.is_alive()


@pytest.mark.integration
def test_port_already_in_use_is_reported(tmp_path):
    repo = write_toy_model(tmp_path, "toy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonProcess(repo, model="toy", check_manifest=False, grpc_port=port)
        with pytest.raises(TritonStartError, match=r"(?i)already in use|address in use|failed to start"):
            server.start()
    assert not server.is_alive()


@pytest.mark.integration
def test_smr_serve_prints_endpoints_serves_and_stops_on_sigint(tmp_path):
    import tritonclient.grpc as grpcclient

    repo = write_toy_model(tmp_path, "toy")
    write_toy_model(repo, "smr")  # the CLI waits for the model named 'smr'
    cmd = [SMR, "serve", "--repository", str(repo), "--no-manifest-check", "--grpc-port", "0",
           "--http-port", "0", "--metrics-port", "0", "--quiet"]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            lines = []
            deadline = time.monotonic() + 120
            while not any(line.startswith("Ctrl+C") for line in lines):
                line = proc.stdout.readline()
                assert line or proc.poll() is None, f"smr serve exited: {proc.stderr.read()}"
                lines.append(line)
                assert time.monotonic() < deadline, "".join(lines)
            text = "".join(lines)
            grpc_url = re.search(r"gRPC\s+(\S+)", text).group(1)
            pid = int(re.search(r"pid (\d+)", text).group(1))
            assert re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics", text)
            client = grpcclient.InferenceServerClient(grpc_url)
            x = np.ones((1, 4), np.float32)
            inputs = [grpcclient.InferInput("X", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("smr", inputs).as_numpy("Y"), x * 2 + 1)
            client.close()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0, proc.stderr.read()
            assert "SIGINT received" in proc.stderr.read()
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_smr_serve_reports_a_missing_repository(tmp_path):
    done = subprocess.run(
        [SMR, "serve", "--repository", str(tmp_path / "absent")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "smr serve: error:" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
