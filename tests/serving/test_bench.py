"""``smr bench``: statistics, CSV, the in-process baseline and a short run against the real server."""

from __future__ import annotations

import csv
import math
import re
import subprocess

import numpy as np
import pytest
from serving_helpers import SMR

from smr.serving.bench import (
    CSV_FIELDS,
    BenchResult,
    bench_onnxruntime,
    format_table,
    latency_percentiles,
    write_csv,
)


def _naive_percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, written out."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_latency_percentiles_in_milliseconds():
    rng = np.random.default_rng(0)
    values = list(rng.exponential(0.05, size=101))
    p50, p95, p99 = latency_percentiles(values)
    for got, q in ((p50, 50), (p95, 95), (p99, 99)):
        assert got == pytest.approx(1e3 * _naive_percentile(values, q), rel=1e-12)
    assert all(math.isnan(v) for v in latency_percentiles([]))


def test_csv_round_trip_and_table(tmp_path):
    results = [
        BenchResult("served", 16, 2, 10.0, 40, 640, 64.0, 250.0, 400.0, 420.0, avg_batch=32.0,
                    backbone_ms_per_cell=15.0, postprocess_ms_per_cell=0.15, postprocess_share=0.15 / 15.15),
        BenchResult("in-process", 16, 1, 10.0, 42, 672, 67.2, 238.0, 240.0, 241.0),
    ]  # fmt: skip
    path = tmp_path / "out" / "bench.csv"
    write_csv(path, results)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_FIELDS)
    assert [r["mode"] for r in rows] == ["served", "in-process"]
    assert float(rows[0]["cells_per_s"]) == 64.0 and int(rows[1]["cells"]) == 672
    assert rows[1]["postprocess_share"] == "nan"
    table = format_table(results)
    assert re.search(r"served\s+16\s+2\s+40\s+64\.0", table)
    assert "0.99%" in table  # 0.15 / 15.15


def _tiny_onnx(path, size: int = 8) -> None:
    """uint8 (N, S, S, 3) -> float32 (N, 3) mean over the image: a stand-in backbone."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["IMAGE"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x", "axes"], ["EMBEDDING"], keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("IMAGE", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, ["N", 3])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def test_onnxruntime_baseline_counts_cells_it_ran(tmp_path):
    _tiny_onnx(tmp_path / "model.onnx")
    result = bench_onnxruntime(tmp_path / "model.onnx", batch_size=5, duration=0.3, warmup=0.05, threads=1)
    assert result.mode == "in-process" and result.requests > 0
    assert result.cells == 5 * result.requests
    assert result.cells_per_s == pytest.approx(result.cells / result.duration_s)
    assert result.p50_ms <= result.p95_ms <= result.p99_ms


def test_baseline_without_a_model_is_a_clear_error(tmp_path):
    from smr.serving.bench import BenchError

    with pytest.raises(BenchError, match="does not exist"):
        bench_onnxruntime(tmp_path / "absent.onnx", batch_size=1, duration=0.1)


def test_bench_without_a_server_says_so(tmp_path):
    from smr.serving.launcher import free_port

    done = subprocess.run(
        [SMR, "bench", "--url", f"127.0.0.1:{free_port()}", "--duration", "1", "--concurrency", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "smr bench: error:" in done.stderr and "Traceback" not in done.stderr


def test_bench_rejects_a_bad_concurrency_list():
    done = subprocess.run([SMR, "bench", "--concurrency", "1,x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "comma-separated integers" in done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_smr_bench_against_the_real_server(smr_server, exported_repository, tmp_path):
    out = tmp_path / "bench.csv"
    cmd = [SMR, "bench", "--url", smr_server.grpc_url, "--batch-size", "2", "--concurrency", "1,2",
           "--duration", "3", "--warmup", "1", "--csv", str(out), "--baseline",
           "--repository", str(exported_repository), "--server-pid", str(smr_server.pid)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "served / in-process =" in done.stdout
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["mode"], r["concurrency"]) for r in rows] == [
        ("served", "1"),
        ("served", "2"),
        ("in-process", "1"),
    ]
    for row in rows:
        requests, cells = int(row["requests"]), int(row["cells"])
        assert requests > 0 and cells == 2 * requests
        assert float(row["cells_per_s"]) == pytest.approx(cells / float(row["duration_s"]), rel=1e-6)
        assert float(row["p50_ms"]) <= float(row["p95_ms"]) <= float(row["p99_ms"])
    for row in rows[:2]:
        assert int(row["errors"]) == 0
        assert float(row["avg_batch"]) >= 1
        assert 0 < float(row["postprocess_share"]) < 1
        assert float(row["backbone_ms_per_cell"]) > float(row["postprocess_ms_per_cell"]) > 0
    for row in rows:  # the server's process tree, and this process for the baseline, did the work
        assert float(row["cpu_seconds"]) > 0
        assert float(row["cells_per_cpu_s"]) == pytest.approx(int(row["cells"]) / float(row["cpu_seconds"]))
    assert "per CPU-second: served" in done.stdout


def test_process_tree_cpu_includes_children():
    import os
    import sys

    from smr.serving.bench import BenchError, process_tree_cpu_seconds

    busy = (
        "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.4: pass\n"
        "print(time.process_time(), flush=True)\ntime.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE, text=True) as child:
        try:
            child_cpu = float(child.stdout.readline())  # what the child measured of itself
            assert process_tree_cpu_seconds(child.pid) == pytest.approx(child_cpu, abs=0.05)
            own = sum(os.times()[:2])
            assert process_tree_cpu_seconds(os.getpid()) >= own + child_cpu - 0.05
        finally:
            child.kill()
    with pytest.raises(BenchError, match="no process"):
        process_tree_cpu_seconds(2**22 + 1)


@pytest.mark.integration
def test_smr_bench_stops_on_failing_requests_and_says_why(smr_server):
    cmd = [SMR, "bench", "--url", smr_server.grpc_url, "--batch-size", "1", "--concurrency", "1",
           "--duration", "1", "--warmup", "0.5", "--outputs", "NO_SUCH_OUTPUT"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert (
        "stopped on an error" in done.stderr + done.stdout and "NO_SUCH_OUTPUT" in done.stderr + done.stdout
    )


def test_server_cpu_by_role_names_python_model_stubs(tmp_path):
    """A stub's CPU counts under its model (its command line names <repo>/<model>/1/model.py)."""
    import os
    import sys

    from smr.serving.bench import server_cpu_by_role

    script = tmp_path / "repo" / "smr_backbone" / "1" / "model.py"
    script.parent.mkdir(parents=True)
    script.write_text(
        "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.4: pass\n"
        "print(time.process_time(), flush=True)\ntime.sleep(60)\n"
    )
    # a stand-in server (a python process) that starts the stand-in stub
    server = [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, sys.argv[1]])"]
    with subprocess.Popen([*server, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        try:
            stub_cpu = float(parent.stdout.readline())  # what the stub measured of itself
            roles = server_cpu_by_role(parent.pid)
            assert set(roles) == {"server", "smr_backbone"}
            assert roles["smr_backbone"] == pytest.approx(stub_cpu, abs=0.05)
            assert roles["server"] < 0.4  # the stand-in server itself only waits
        finally:
            for pid in _children(parent.pid):
                os.kill(pid, 9)
            parent.kill()


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_cpu_per_cell_by_role_in_the_csv(tmp_path):
    result = BenchResult("served", 16, 2, 10.0, 10, 160, 16.0, 1.0, 2.0, 3.0, cpu_seconds=0.8)
    result.cpu_by_role = {"server": 0.1, "smr_backbone": 0.6, "smr_postprocess": 0.1, "client": 0.05}
    assert result.cpu_ms_per_cell() == pytest.approx(5.0)
    assert result.cpu_ms_per_cell("smr_backbone") == pytest.approx(3.75)
    row = result.row()
    assert row["backbone_cpu_ms_per_cell"] == pytest.approx(3.75)
    assert row["postprocess_cpu_ms_per_cell"] == pytest.approx(0.625)
    assert row["server_cpu_ms_per_cell"] == pytest.approx(0.625)
    assert row["client_cpu_ms_per_cell"] == pytest.approx(0.3125)
    from smr.serving.bench import cpu_breakdown

    text = cpu_breakdown(result)
    assert "backbone stub 3.750" in text and "postprocess stub 0.625" in text and "clients 0.312" in text
    inproc = BenchResult("in-process", 16, 1, 10.0, 10, 160, 16.0, 1.0, 2.0, 3.0, cpu_seconds=0.4)
    assert math.isnan(inproc.row()["backbone_cpu_ms_per_cell"]) and inproc.row()["cpu_ms_per_cell"] == 2.5
