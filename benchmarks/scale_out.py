"""Two servers + Ray vs one server + the plain loop: the same synthetic slides scored both ways.

Not part of the test suite. Starts two tritonservers on REPO (free loopback ports), writes
``--slides`` synthetic slides of ``--cells`` cells each, and runs, in this order:

1. ``smr score-slides DIR --url A --parallel P`` (one server, the plain local loop);
2. ``smr score-slides DIR --url A,B --ray`` (two servers, one Ray task per slide on a local
   Ray cluster started by the command);

each as a fresh process, timed from start to exit. It prints cells/s, wall time, the overhead of
the second over the first, Ray's start-up and shut-down alone (``ray.init``, one task and
``ray.shutdown`` in a fresh process), the network bytes per cell, the CPU and its flags; and
checks that both runs wrote every detection once with the same answers.

    python benchmarks/scale_out.py --repository REPO --slides 4 --cells 40 --json scale_out.json

REPO is an `smr export --runtime python` repository. Figures: BENCHMARKS.md, docs/scaling.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

SMR = str(Path(sys.executable).parent / "smr")
ATOL = 1e-4


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"scale_out: {' '.join(cmd[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def _ray_startup() -> float:
    """Seconds to start a local Ray cluster as `--ray` does, run one task and shut it down."""
    from smr.clients.distributed import WORKER_NICENESS

    code = (
        "import logging, ray; ray.init(include_dashboard=False, logging_level=logging.WARNING); "
        "ray.get(ray.remote(lambda: 1).remote()); ray.shutdown()"
    )
    return _timed([sys.executable, "-c", code], env={**os.environ, WORKER_NICENESS: "0"})


def _same(out_a: Path, out_b: Path, names: list[str]) -> int:
    """Both runs list every detection once with the same answers; the number of scored cells."""
    cells = 0
    for name in names:
        rows_a, rows_b = _read_csv(out_a / name / "cells.csv"), _read_csv(out_b / name / "cells.csv")
        ids = [r["id"] for r in rows_a]
        if ids != [r["id"] for r in rows_b] or len(set(ids)) != len(ids):
            raise SystemExit(f"scale_out: {name}: the two runs list different detections")
        for a, b in zip(rows_a, rows_b, strict=True):
            for key in a:
                if key == "probability" or key.startswith(("position_", "distance_")):
                    if a[key] != b[key] and abs(float(a[key]) - float(b[key])) > ATOL:
                        raise SystemExit(f"scale_out: {name} {a['id']} {key}: {a[key]} vs {b[key]}")
        cells += sum(r["status"] == "scored" for r in rows_a)
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", required=True, help="an `smr export --runtime python` repository")
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--cells", type=int, default=40, help="detections per slide")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-in-flight", type=int, default=2, help="per server")
    parser.add_argument("--parallel", type=int, default=2, help="slides at once in the plain loop")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    if not (args.slides >= 1 and args.cells >= 1 and args.batch_size >= 1 and args.max_in_flight >= 1):
        parser.error("--slides, --cells, --batch-size and --max-in-flight must be >= 1")

    from smr.serving.launcher import TritonProcess
    from smr.synth.render import FIELD_UM
    from smr.synth.slide import SlideSettings, write_slide
    from smr.train.recipe import cpu_features

    with TemporaryDirectory(prefix="smr-scale-out-") as tmp, TritonProcess(args.repository) as a:
        with TritonProcess(args.repository) as b:
            size = a.info.inputs[0][2][0]  # IMAGE: (size, size, 3)
            names = [f"case-{k}" for k in range(args.slides)]
            src = Path(tmp) / "slides.csv"  # a list file: the generator's slide.json is not detections
            lines = ["slide,detections,name"]
            for k, name in enumerate(names):
                write_slide(Path(tmp) / name, SlideSettings(cells=args.cells, seed=100 + k))
                lines.append(f"{name}/slide.tiff,{name}/detections.csv,{name}")
            src.write_text("\n".join(lines) + "\n")
            common = ["--mpp", str(FIELD_UM / size), "--batch-size", str(args.batch_size), "--no-progress"]
            plain = [
                SMR,
                "score-slides",
                str(src),
                "--out",
                str(Path(tmp) / "plain"),
                "--url",
                a.grpc_url,
                "--parallel",
                str(args.parallel),
                "--max-in-flight",
                str(args.max_in_flight),
                *common,
            ]
            ray = [SMR, "score-slides", str(src), "--out", str(Path(tmp) / "ray"), "--url",
                   f"{a.grpc_url},{b.grpc_url}", "--ray", "--max-in-flight", str(args.max_in_flight),
                   *common]  # fmt: skip
            print(f"scoring {args.slides} slides x {args.cells} cells at {size} px ...", file=sys.stderr)
            plain_s = _timed(plain)
            ray_s = _timed(ray)
            startup_s = _ray_startup()
            cells = _same(Path(tmp) / "plain", Path(tmp) / "ray", names)

    cpu = cpu_features()
    request_bytes = size * size * 3
    answer_bytes = 4 * (15 + 1 + 2 + 2)  # the paper's 15 classes and 2 lineages, no embedding
    result = {
        "slides": args.slides,
        "cells": cells,
        "image_size": size,
        "batch_size": args.batch_size,
        "one_server_plain": {"wall_s": plain_s, "cells_per_s": cells / plain_s},
        "two_servers_ray": {"wall_s": ray_s, "cells_per_s": cells / ray_s},
        "overhead_s": ray_s - plain_s,
        "overhead_pct": 100 * (ray_s - plain_s) / plain_s,
        "ray_startup_s": startup_s,
        "bytes_per_cell": request_bytes + answer_bytes,
        "cpu": {"model": cpu["model"], "cores": os.cpu_count(), "flags": cpu["flags"]},
        "load_average": os.getloadavg(),
    }
    print(
        f"| run | wall time | cells/s |\n|---|---|---|\n"
        f"| one server, plain loop (--parallel {args.parallel}) | {plain_s:.1f} s | {cells / plain_s:.1f} |\n"
        f"| two servers, Ray (local cluster, {os.cpu_count()} CPUs) | {ray_s:.1f} s "
        f"| {cells / ray_s:.1f} |\n\n"
        f"{cells} cells in {args.slides} slides at {size} px, batch {args.batch_size}; every detection "
        f"once in both runs, same answers (to {ATOL:g})\n"
        f"overhead of two servers + Ray: {ray_s - plain_s:+.1f} s ({result['overhead_pct']:+.0f} %); "
        f"Ray's start-up and shut-down alone (fresh process, one task): {startup_s:.1f} s\n"
        f"network: {request_bytes + answer_bytes:,} bytes per cell (request {request_bytes:,}, answer "
        f"{answer_bytes})\n"
        f"CPU: {cpu['model']}, {os.cpu_count()} cores, flags {' '.join(cpu['flags'])}; load average "
        + " / ".join(f"{v:.1f}" for v in result["load_average"])
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
