"""Soak `smr serve` for N minutes at C concurrent clients, killing one python stub in the middle.

Not part of the test suite (it runs for minutes). It starts the real `smr serve` (supervised, on
free loopback ports), runs C client threads (each its own gRPC client, one request in flight,
batches of random uint8 patches of the server's size) for ``--minutes``, SIGKILLs the stub of
``--kill`` at ``--kill-at`` of the run, and reports:

- requests and errors, and when the errors happened relative to the kill (the restart window);
- the recovery time: from the kill until the first request sent after it succeeds;
- throughput before and after the kill;
- the resident memory of the server's process tree (tritonserver and its stubs), sampled every
  5 s: growth from the first sample after warm-up to the kill, and from the first sample after
  the restart to the end.

    python benchmarks/soak.py --repository REPO --minutes 5 --clients 16 --json soak.json

REPO is an `smr export --runtime python` repository. Figures: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from smr.core.contract import BACKBONE, ENSEMBLE, IMAGE

SMR = str(Path(sys.executable).parent / "smr")


def _children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _server_tree(serve_pid: int) -> tuple[int | None, list[int]]:
    """(tritonserver pid, [tritonserver and its stubs]) under the `smr serve` process."""
    for pid in _children(serve_pid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"tritonserver"):
                return pid, [pid, *_children(pid)]
        except OSError:
            continue
    return None, []


def _stub_pid(server_pid: int, model: str) -> int:
    for pid in _children(server_pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if len(argv) > 8 and argv[8].decode().startswith(model + "_"):
            return pid
    raise RuntimeError(f"no python stub of {model} under tritonserver {server_pid}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", required=True, help="an `smr export --runtime python` repository")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--kill", default=BACKBONE, help="model whose stub is killed")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the run (default 0.5)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before memory is counted")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    if not (args.minutes > 0 and args.clients >= 1 and args.batch_size >= 1 and 0 < args.kill_at < 1):
        parser.error("--minutes > 0, --clients >= 1, --batch-size >= 1 and 0 < --kill-at < 1")

    import tritonclient.grpc as grpcclient

    cmd = [SMR, "serve", "--repository", args.repository, "--grpc-port", "0", "--metrics-port", "0",
           "--health-port", "0", "--quiet"]  # fmt: skip
    serve = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = []
    while not any(line.startswith("Ctrl+C") for line in banner):
        line = serve.stdout.readline()
        if not line:
            raise SystemExit(f"soak: smr serve exited:\n{serve.stderr.read()}")
        banner.append(line)
    text = "".join(banner)
    url = re.search(r"gRPC\s+(\S+)", text).group(1)
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(serve.stderr), daemon=True).start()
    with grpcclient.InferenceServerClient(url) as client:
        size = int(client.get_model_config(ENSEMBLE, as_json=True)["config"]["input"][0]["dims"][0])

    duration = args.minutes * 60
    events: list[tuple[float, float, str | None]] = []  # (sent, done, error)
    stop = threading.Event()

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpcclient.InferenceServerClient(url) as c:
            while not stop.is_set():
                images = rng.integers(0, 256, size=(args.batch_size, size, size, 3), dtype=np.uint8)
                inputs = [grpcclient.InferInput(IMAGE, list(images.shape), "UINT8")]
                inputs[0].set_data_from_numpy(images)
                sent = time.monotonic()
                try:
                    c.infer(ENSEMBLE, inputs, client_timeout=120)
                    events.append((sent, time.monotonic(), None))
                except Exception as exc:  # recorded; a real client would retry
                    events.append((sent, time.monotonic(), str(exc).splitlines()[0][:160]))
                    time.sleep(0.5)

    start = time.monotonic()
    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(args.clients)]
    for t in threads:
        t.start()
    memory: list[tuple[float, float]] = []
    killed = None
    try:
        while time.monotonic() - start < duration:
            now = time.monotonic()
            _, tree = _server_tree(serve.pid)
            memory.append((now - start, _rss_mib(tree)))
            if killed is None and now - start >= args.kill_at * duration:
                server_pid, _ = _server_tree(serve.pid)
                os.kill(_stub_pid(server_pid, args.kill), signal.SIGKILL)
                killed = time.monotonic()
            time.sleep(min(5.0, max(0.0, start + duration - time.monotonic())))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=150)
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=120)

    ok = [(s, d) for s, d, e in events if e is None]
    errors = [(s, d, e) for s, d, e in events if e is not None]
    first_ok_after = min((d for s, d in ok if s >= killed), default=None)
    recovery = first_ok_after - killed if first_ok_after else None
    before = [(s, d) for s, d in ok if start + args.warmup <= d < killed]
    after = [(s, d) for s, d in ok if first_ok_after and first_ok_after <= d]
    end = max(d for _, d in ok) if ok else killed

    def rate(done: list, t0: float, t1: float) -> float:
        return len(done) * args.batch_size / max(t1 - t0, 1e-9)

    def growth(samples: list[tuple[float, float]]) -> float | None:
        return (samples[-1][1] / samples[0][1] - 1) * 100 if len(samples) >= 2 and samples[0][1] else None

    kill_t = killed - start
    pre = [m for m in memory if args.warmup <= m[0] < kill_t and m[1] > 0]
    post = [
        m for m in memory if recovery is not None and m[0] >= kill_t + recovery + args.warmup and m[1] > 0
    ]
    restart_lines = [line.strip() for line in stderr_lines if "restart" in line]
    done_errors = [d - killed for _, d, _ in errors]
    window = [round(min(done_errors), 2), round(max(done_errors), 2)] if errors else None
    outside = sum(1 for s, d, _ in errors if d < killed or (first_ok_after and s > first_ok_after))
    result = {
        "minutes": args.minutes,
        "clients": args.clients,
        "batch_size": args.batch_size,
        "image_size": size,
        "killed": args.kill,
        "killed_at_s": round(kill_t, 1),
        "requests": len(events),
        "errors": len(errors),
        "error_window_s": window,
        "errors_outside_window": outside,
        "error_kinds": sorted({e for _, _, e in errors})[:5],
        "recovery_s": round(recovery, 2) if recovery is not None else None,
        "cells_per_s_before": round(rate(before, start + args.warmup, killed), 2),
        "cells_per_s_after": round(rate(after, first_ok_after, end), 2) if first_ok_after else None,
        "rss_mib_before_kill": [round(pre[0][1], 1), round(pre[-1][1], 1)] if pre else None,
        "rss_growth_before_kill_pct": round(growth(pre), 2) if growth(pre) is not None else None,
        "rss_mib_after_restart": [round(post[0][1], 1), round(post[-1][1], 1)] if post else None,
        "rss_growth_after_restart_pct": round(growth(post), 2) if growth(post) is not None else None,
        "supervisor_log": restart_lines,
        "load_average_end": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
