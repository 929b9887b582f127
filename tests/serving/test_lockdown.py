"""The embedded server locked down by default: no HTTP, restricted admin APIs, private shared memory,
stale regions of dead servers removed, no byte code written, and death with its parent."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import SMR, port_is_open, write_toy_model

from smr.serving import shm
from smr.serving.launcher import ADMIN_KEY, RESTRICTED_APIS, TritonProcess

pytestmark = pytest.mark.integration


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _restricted_calls(client, prefix: str):
    """(name, call(headers)) of every restricted API family over gRPC."""
    return [
        ("register the python backend's own region",
         lambda h: client.register_system_shared_memory("steal", f"/{prefix}x", 1 << 20, headers=h)),
        ("shared-memory status", lambda h: client.get_system_shared_memory_status(headers=h)),
        ("unregister shared memory", lambda h: client.unregister_system_shared_memory(headers=h)),
        ("repository index", lambda h: client.get_model_repository_index(headers=h)),
        ("unload a model", lambda h: client.unload_model("toy", headers=h)),
        ("log settings", lambda h: client.get_log_settings(headers=h)),
        ("change the log verbosity",
         lambda h: client.update_log_settings({"log_verbose_level": 1}, headers=h)),
        ("trace settings", lambda h: client.get_trace_settings(headers=h)),
    ]  # fmt: skip


def test_default_server_serves_grpc_and_metrics_only(toy_server):
    assert toy_server.http_url is None
    assert _listening_ports(toy_server.pid) == {toy_server.ports["grpc"], toy_server.ports["metrics"]}
    assert "--allow-http=false" in toy_server.command()


def test_the_chunked_request_that_crashes_2_51_reaches_no_http_front_end(toy_server):
    """CVE-2025-23310: a large chunked HTTP request crashed 2.51's HTTP server. The default server has
    none; sent to every port it listens on, the request is refused and the server stays up."""
    import socket

    import tritonclient.grpc as grpcclient

    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(56)) + b"0\r\n\r\n"  # 3.6 MB
    head = b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    request = head + body
    for port in sorted(_listening_ports(toy_server.pid)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(request)
                sock.recv(1024)
            except OSError:
                pass  # refused or reset: what the port should do with it
    time.sleep(1.0)
    assert toy_server.poll() is None, "tritonserver died"
    with grpcclient.InferenceServerClient(toy_server.grpc_url) as client:
        assert client.is_server_ready()


def test_restricted_apis_are_refused_without_the_key_and_work_with_it(toy_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert set(RESTRICTED_APIS) == {"shared-memory", "model-repository", "logging", "trace"}
    region = shm.regions(toy_server.shm_prefix)[0]  # the python backend's region of the toy model
    with grpcclient.InferenceServerClient(toy_server.grpc_url) as client:
        for name, call in _restricted_calls(client, toy_server.shm_prefix):
            with pytest.raises(InferenceServerException, match="restricted") as info:
                call(None)
            assert ADMIN_KEY in info.value.message(), name
        # the stub's own region cannot be registered (and so neither read nor written) by a client
        with pytest.raises(InferenceServerException, match="restricted"):
            client.register_system_shared_memory("steal", "/" + region.name, 1 << 16)
        status = client.get_system_shared_memory_status(headers=toy_server.admin_headers(), as_json=True)
        assert not status.get("regions")  # nothing was registered
        # the key unlocks them: it is the server's, not a key that nothing would accept
        admin = toy_server.admin_headers()
        assert "toy" in {
            m["name"] for m in client.get_model_repository_index(headers=admin, as_json=True)["models"]
        }
        assert client.get_log_settings(headers=admin, as_json=True)["settings"]["log_verbose_level"]
        # health, metadata, config and inference stay open
        assert client.is_model_ready("toy") and client.get_model_config("toy")
        x = np.ones((1, 4), np.float32)
        inputs = [grpcclient.InferInput("X", [1, 4], "FP32")]
        inputs[0].set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("toy", inputs).as_numpy("Y"), x * 2 + 1)
    key_file = toy_server.admin_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert key_file.read_text().strip() == next(iter(toy_server.admin_headers().values()))


def test_http_when_asked_is_restricted_too(tmp_path):
    import urllib.error
    import urllib.request

    repo = write_toy_model(tmp_path, "toy")
    with TritonProcess(repo, model="toy", check_manifest=False, http=True) as server:
        assert server.ports["http"] in _listening_ports(server.pid)
        region = shm.regions(server.shm_prefix)[0]
        body = f'{{"key": "/{region.name}", "offset": 0, "byte_size": 65536}}'.encode()
        calls = [("/v2/systemsharedmemory/region/steal/register", body), ("/v2/repository/index", b"{}"),
                 ("/v2/logging", b'{"log_verbose_level": 1}')]  # fmt: skip
        for path, data in calls:
            request = urllib.request.Request(server.http_url + path, data=data, method="POST")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=10)
            assert info.value.code == 403 and ADMIN_KEY in info.value.read().decode(), path
        request = urllib.request.Request(
            server.http_url + "/v2/repository/index", data=b"{}", method="POST",
            headers=server.admin_headers("http"),
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


def test_regions_are_private_and_removed_after_stop_and_after_a_kill(tmp_path):
    repo = write_toy_model(tmp_path, "toy")
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    server = TritonProcess(repo, model="toy", check_manifest=False).start()
    try:
        first = server.shm_prefix
        (region,) = shm.regions(first)
        assert stat.S_IMODE(region.stat().st_mode) == 0o600
        os.killpg(server.pid, signal.SIGKILL)  # a crash: the server cannot clean up after itself
        server._process.wait()
        assert shm.regions(first)  # left behind ...
        key = server.admin_key_file.read_text()
        server.restart()
        assert not shm.regions(first)  # ... and removed by the restart
        (region,) = shm.regions(server.shm_prefix)
        assert stat.S_IMODE(region.stat().st_mode) == 0o600
        assert server.admin_key_file.read_text() != key  # a new secret per start
        second = server.shm_prefix
    finally:
        assert server.stop() == 0
    assert not shm.regions(second)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before  # no __pycache__ written by the stubs


def test_stale_regions_of_dead_smr_servers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = shm.SHM_DIR / f"smr{dead.pid}_abcdef_test-stale"
    ours = shm.SHM_DIR / f"smr{os.getpid()}_abcdef_test-live"  # a live launcher's
    mapped = shm.SHM_DIR / f"smr{dead.pid}_fedcba_test-mapped"  # launcher gone, but still in use
    other = shm.SHM_DIR / "not-smr-region"
    holder = None
    try:
        for path in (stale, ours, mapped, other):
            path.write_bytes(b"\0" * 4096)
        holder = subprocess.Popen(
            [sys.executable, "-c", f"import mmap,sys,time; f=open({str(mapped)!r},'r+b'); "
             "m=mmap.mmap(f.fileno(), 4096); print('mapped', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout.readline().strip() == "mapped"
        assert stale in shm.stale_regions() and mapped not in shm.stale_regions()
        repo = write_toy_model(tmp_path, "toy")
        with TritonProcess(repo, model="toy", check_manifest=False):  # start removes the stale ones
            assert not stale.exists()
            assert ours.exists() and mapped.exists() and other.exists()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
            holder.stdout.close()
        for path in (stale, ours, mapped, other):
            path.unlink(missing_ok=True)


def test_smr_serve_killed_takes_the_server_with_it(tmp_path):
    repo = write_toy_model(tmp_path, "smr")
    cmd = [SMR, "serve", "--repository", str(repo), "--no-manifest-check", "--grpc-port", "0",
           "--metrics-port", "0", "--health-port", "0", "--quiet"]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        lines = []
        while not any(line.startswith("Ctrl+C") for line in lines):
            line = proc.stdout.readline()
            assert line, f"smr serve exited: {''.join(lines)}"
            lines.append(line)
        text = "".join(lines)
        pid = int(re.search(r"pid (\d+)", text).group(1))
        grpc_port = int(re.search(r"gRPC\s+\S+:(\d+)", text).group(1))
        assert re.search(r"HTTP\s+off", text)
        prefixes = {
            p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in shm.SHM_DIR.glob(f"smr{proc.pid}_*")
        }
        assert prefixes
        proc.kill()  # SIGKILL: no handler of smr serve runs
        proc.wait()
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break  # tritonserver and its stubs are gone
        assert time.monotonic() < deadline, "tritonserver outlived smr serve"
        time.sleep(0.1)
    assert not port_is_open(grpc_port)
    assert not list(shm.SHM_DIR.glob(f"smr{proc.pid}_*"))


def test_smr_serve_reports_a_health_port_in_use_before_starting_the_server(tmp_path):
    import socket

    repo = write_toy_model(tmp_path, "smr")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [SMR, "serve", "--repository", str(repo), "--no-manifest-check", "--grpc-port", "0",
             "--metrics-port", "0", "--health-port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2
    assert f"smr serve: error: --health-port {port} on 127.0.0.1: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr and "SMR is serving" not in done.stdout


BAD_FLAGS = [("--probe-interval", "0"), ("--ready-timeout", "-1"), ("--log-verbose", "99"),
             ("--health-port", "70000")]  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), BAD_FLAGS)
def test_smr_serve_bounds_its_numeric_flags(flag, value):
    done = subprocess.run([SMR, "serve", flag, value], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and flag in done.stderr and "Traceback" not in done.stderr
