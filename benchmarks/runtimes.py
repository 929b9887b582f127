"""One table: the backbone's runtimes and precisions, in-process and served, at 96 and 224 px.

For each image size, the run is exported five times (``smr export``'s own code path):
onnxruntime FP32 and INT8 (``--runtime python``: the embedded server has the python backend only),
OpenVINO FP32, BF16 and INT8. Each export's accuracy check gives the macro-F1 change and the share
of same-class cells against onnxruntime FP32 on the run's validation images (the thresholds are
relaxed here so that a failing precision is still measured; the table says whether it passes the
export's default check: <= 1 pp macro-F1 loss, >= 97 % same class). Then one tritonserver per
configuration is started, all at once, and the configurations are measured in turns, in-process
(``smr bench --baseline``'s loop on the same engine, with the scheduling settings the served model
reads from its config) and served (``smr bench``'s client processes), ``--rounds`` times, once
each per ``--concurrency`` (in-process, served, in-process, served ...: both sides get as many
tries); each figure is the best of them, served at the best concurrency. A second table shows
where a served cell's CPU time goes (the backbone's stub, the postprocess's stub, tritonserver,
the clients) against the in-process CPU time. The CPU's flags are printed with the tables.

A size other than the run's is exported from a copy of the run with that ``image_size`` (the same
weights; DenseNet is fully convolutional): its speed is the network's at that size, its accuracy
figures compare precisions at that size, not the run's accuracy.

    .venv/bin/python benchmarks/runtimes.py --run RUN --out /tmp/smr-runtimes \\
        --markdown /tmp/smr-runtimes/table.md
    .venv/bin/python benchmarks/runtimes.py --run RUN --out /tmp/smr-rt --sizes 96 \\
        --configs onnxruntime:fp32,openvino:bf16 --concurrency 1,2,4 --batch 64
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from smr.core.contract import BACKBONE, POSTPROCESS
from smr.export.pbtxt import ServingOptions
from smr.export.precision import MAX_F1_LOSS, MIN_AGREEMENT
from smr.export.repository import ExportOptions, export_repository
from smr.serving.bench import BenchResult, backbone_engine, bench_in_process, bench_served
from smr.serving.launcher import TritonProcess
from smr.train.recipe import cpu_features

# (label, smr export --runtime, --precision)
CONFIGS = (
    ("onnxruntime", "python", "fp32"),
    ("onnxruntime", "python", "int8"),
    ("openvino", "openvino", "fp32"),
    ("openvino", "openvino", "bf16"),
    ("openvino", "openvino", "int8"),
)


@dataclass
class Row:
    size: int
    runtime: str
    precision: str
    f1_change: float = math.nan  # macro F1, precision minus FP32 (pp / 100)
    agreement: float = math.nan
    passes: bool = True
    in_process: list[BenchResult] = field(default_factory=list)
    served: list[BenchResult] = field(default_factory=list)

    def best(self, mode: str, key: str) -> float:
        results = self.in_process if mode == "in-process" else self.served
        values = [getattr(r, key) for r in results if not math.isnan(getattr(r, key))]
        return max(values) if values else math.nan

    def fastest_served(self) -> BenchResult | None:
        """The served result with the most cells/s (its concurrency, batch formed, postprocess share)."""
        return max(self.served, key=lambda r: r.cells_per_s, default=None)


def chosen_configs(spec: str) -> tuple[tuple[str, str, str], ...]:
    """The CONFIGS named by ``spec`` ("onnxruntime:fp32,openvino:bf16"; "all": every one)."""
    if spec.strip() == "all":
        return CONFIGS
    wanted = [item.strip().lower() for item in spec.split(",") if item.strip()]
    known = {f"{label}:{precision}": (label, runtime, precision) for label, runtime, precision in CONFIGS}
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise SystemExit(f"--configs: unknown {unknown or spec!r}; choose from {', '.join(known)} or all")
    chosen = [known[w] for w in wanted]
    if chosen[0][0] != "onnxruntime" or chosen[0][2] != "fp32":  # the reference of the table's ratios
        chosen = [known["onnxruntime:fp32"], *[c for c in chosen if c != known["onnxruntime:fp32"]]]
    return tuple(chosen)


def _run_at(run: Path, size: int, tmp: Path) -> Path:
    """``run`` itself at its own size, else a copy whose config asks for ``size`` px."""
    doc = json.loads((run / "config.json").read_text())
    if doc["config"]["image_size"] == size:
        return run
    copy = tmp / f"run-{size}"
    if not copy.exists():
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint.pt"))
        doc["config"]["image_size"] = doc["image_size"] = size
        (copy / "config.json").write_text(json.dumps(doc, indent=2))
    return copy


def _export(run: Path, repo: Path, runtime: str, precision: str, eval_images: int, row: Row) -> None:
    options = ExportOptions(
        serving=ServingOptions(runtime=runtime, max_batch_size=64),
        precision=precision,
        evaluation_images=eval_images,
        max_f1_loss=1.0,  # measure every precision; the table applies the default check
        min_agreement=0.0,
    )
    started = time.perf_counter()
    result = export_repository(run, repo, options, log=lambda _: None)
    print(f"  exported {row.runtime} {precision} in {time.perf_counter() - started:.0f} s", flush=True)
    if result.precision_reports:
        (report,) = result.precision_reports
        row.f1_change = report.accuracy.macro_f1_change
        row.agreement = report.accuracy.class_agreement
    else:  # FP32 in onnxruntime is the reference itself (openvino FP32 passed the 1e-4 parity check)
        row.f1_change, row.agreement = 0.0, 1.0
    row.passes = -row.f1_change <= MAX_F1_LOSS and row.agreement >= MIN_AGREEMENT


def bench_size(args, run: Path, size: int) -> list[Row]:
    rows, repos = [], []
    for label, runtime, precision in args.configs:
        row = Row(size, label, precision)
        repo = args.out / f"{size}px-{label}-{precision}"
        if repo.exists():
            shutil.rmtree(repo)
        _export(run, repo, runtime, precision, args.eval_images, row)
        rows.append(row)
        repos.append(repo)
    servers = []
    try:
        for repo in repos:
            servers.append(TritonProcess(repo, ready_timeout=300).start())
        shape = (size, size, 3)
        engines = [backbone_engine(repo) for repo in repos]
        for turn in range(args.rounds):
            for row, server, engine in zip(rows, servers, engines, strict=True):
                _measure_turn(row, server, engine, shape, args, turn)
    finally:
        for server in servers:
            server.stop()
    return rows


def _measure_turn(row: Row, server, engine, shape: tuple[int, ...], args, turn: int) -> None:
    """One turn of a configuration: in-process, then served, once per concurrency (so that the
    in-process side gets as many tries as the served one)."""
    inproc, served = [], []
    for concurrency in args.concurrency:
        inproc.append(
            bench_in_process(engine, shape, batch_size=args.batch, duration=args.duration, warmup=args.warmup)
        )
        served.append(
            bench_served(
                server.grpc_url,
                batch_size=args.batch,
                concurrency=concurrency,
                duration=args.duration,
                warmup=args.warmup,
                image_shape=shape,
                server_pid=server.pid,
            )  # fmt: skip
        )
    row.in_process += inproc
    row.served += served
    print(
        f"  round {turn + 1} {row.size} px {row.runtime} {row.precision}: in-process "
        + ", ".join(f"{r.cells_per_s:.1f} ({r.cells_per_cpu_s:.1f} per CPU-s)" for r in inproc)
        + " cells/s; served "
        + ", ".join(
            f"c{r.concurrency} {r.cells_per_s:.1f} ({r.cells_per_cpu_s:.1f}, batch {r.avg_batch:.0f}, "
            f"post {100 * r.postprocess_share:.1f}%)"
            for r in served
        ),
        flush=True,
    )


def markdown(rows: list[Row], cpu: dict, args) -> str:
    lines = [
        f"CPU: {cpu['model']} ({cpu['machine']}), {args.cores} cores; flags: {', '.join(cpu['flags'])}",
        "",
        f"Batch {args.batch}; served: {', '.join(map(str, args.concurrency))} client processes; "
        f"{args.rounds} rounds, the configurations in turns, in-process and served measured alternately "
        f"({args.duration:.0f} s each, once per concurrency); each figure is the best. Best c: the "
        "concurrency of the most served cells/s, with the batch the "
        "dynamic batcher formed and the postprocess's share of a cell's compute time there. Macro-F1 "
        f"change and same class: against onnxruntime FP32 on {args.eval_images or 'all'} validation "
        "images of the run.",
        "",
        "| size | runtime | precision | in-process cells/s | served cells/s | served / in-process | "
        "in-process cells/CPU-s | served cells/CPU-s | CPU-s ratio | best c | batch formed | post share | "
        "served × ORT FP32 | macro F1 change | same class | check |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in sorted({r.size for r in rows}):
        group = [r for r in rows if r.size == size]
        base = next(r for r in group if r.runtime == "onnxruntime" and r.precision == "fp32")
        base_served = base.best("served", "cells_per_s")
        for r in group:
            ip, sv = r.best("in-process", "cells_per_s"), r.best("served", "cells_per_s")
            ipc, svc = r.best("in-process", "cells_per_cpu_s"), r.best("served", "cells_per_cpu_s")
            top = r.fastest_served()
            if top is None:
                continue
            lines.append(
                f"| {size} | {r.runtime} | {r.precision.upper()} | {ip:.1f} | {sv:.1f} | {sv / ip:.2f} | "
                f"{ipc:.1f} | {svc:.1f} | {svc / ipc:.2f} | {top.concurrency} | {top.avg_batch:.1f} | "
                f"{100 * top.postprocess_share:.1f}% | {sv / base_served:.2f} | "
                f"{100 * r.f1_change:+.2f} pp | {100 * r.agreement:.1f}% | "
                f"{'passes' if r.passes else 'refused'} |"
            )
    return "\n".join(lines + ["", *cpu_table(rows)])


def cpu_table(rows: list[Row]) -> list[str]:
    """Where a served cell's CPU time goes, at the concurrency of the most served cells/s."""
    lines = [
        "CPU ms per cell: in-process (the best try) against served at the best concurrency, the "
        "server's process tree by part, and the client processes (not part of the server's figure).",
        "",
        "| size | runtime | precision | in-process | served: backbone stub | postprocess stub | "
        "tritonserver | server total | extra | clients |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        top = r.fastest_served()
        inproc = min((x.cpu_ms_per_cell() for x in r.in_process), default=math.nan)
        if top is None:
            continue
        parts = [top.cpu_ms_per_cell(role) for role in (BACKBONE, POSTPROCESS, "server")]
        total = top.cpu_ms_per_cell()
        lines.append(
            f"| {r.size} | {r.runtime} | {r.precision.upper()} | {inproc:.3f} | "
            + " | ".join(f"{v:.3f}" for v in parts)
            + f" | {total:.3f} | {total - inproc:+.3f} | {top.cpu_ms_per_cell('client'):.3f} |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a trained run directory (not modified)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the exported repositories")
    parser.add_argument(
        "--sizes", default="96,224", help="image sizes, comma-separated (default: %(default)s)"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[2],
        help="client processes, comma-separated; the best is reported (default: 2)",
    )
    parser.add_argument(
        "--configs",
        type=chosen_configs,
        default=CONFIGS,
        help="runtime:precision pairs, comma-separated, e.g. onnxruntime:fp32,openvino:bf16 (default: all; "
        "onnxruntime:fp32, the reference, is always measured)",
    )
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--eval-images", type=int, default=192, help="validation images for the check")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    import os

    args.cores = os.cpu_count()
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_features()
    print(f"CPU: {cpu['model']}; flags: {', '.join(cpu['flags'])}", flush=True)
    started = time.perf_counter()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"{size} px:", flush=True)
        rows += bench_size(args, _run_at(args.run, size, args.out), size)
    table = markdown(rows, cpu, args)
    print(table)
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
