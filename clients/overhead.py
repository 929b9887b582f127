"""Client overhead benchmark: ``smr score-slide`` throughput against ``smr bench`` at the same settings.

``smr bench`` sends random patches that are ready in memory; ``score-slide`` must also read the
slide, crop every patch, journal every batch and write its outputs. This script measures both on
the same server, batch size and concurrency (requests in flight), alternating bench and scoring,
and prints the ratio of scoring to bench throughput (``ratio``: the scoring loop, the figure to
hold against 0.9; ``ratio_end_to_end``: including reading the detections and writing the CSV,
GeoJSON and the report)::

    python -m smr.clients.overhead --repository model_repository --batch-size 16 --concurrency 2

Without ``--slide`` a synthetic slide is made (``smr.synth``) with enough cells for about
``--duration`` seconds of scoring. Without ``--url`` a local server is started on ``--repository``.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    url: str,
    *,
    batch_size: int,
    concurrency: int,
    duration: float,
    warmup: float,
    slide: Path | None,
    detections: Path | None,
    work: Path,
    mpp: float | None = None,
    rounds: int = 3,
) -> dict[str, float]:
    """``rounds`` times bench then score, and a last bench; returns throughputs, their ratio, client CPU.

    Interleaving cancels most of the drift of a shared machine; each scoring round is compared
    with the mean of the bench runs on either side of it.
    """
    from smr.clients.client import SMRClient, requested_output_names
    from smr.clients.scoring import score_slide
    from smr.serving.bench import bench_served

    with SMRClient(url) as probe:  # the bench asks for the same outputs as the client
        outputs = requested_output_names(probe.info, embeddings=False)

    def bench() -> float:
        result = bench_served(
            url,
            batch_size=batch_size,
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            outputs=outputs,
        )
        if result.errors:
            raise RuntimeError(f"smr bench had {result.errors} errors: {result.first_error}")
        return result.cells_per_s

    benches = [bench()]
    if slide is None:
        from smr.synth.slide import SlideSettings, write_slide

        cells = max(64, math.ceil(benches[0] * duration))
        print(f"making a synthetic slide with {cells} cells ...", file=sys.stderr)
        write_slide(work / "slide", SlideSettings(cells=cells, seed=7))
        slide, detections = work / "slide" / "slide.tiff", work / "slide" / "detections.csv"
    scores, end_to_end, cpu_per_cell = [], [], []
    with SMRClient(url, batch_size=batch_size, max_in_flight=concurrency) as client:
        _ = client.info  # connect before timing
        for k in range(rounds):
            if k:
                benches.append(bench())
            cpu = _cpu_seconds()
            wall = time.perf_counter()
            score = score_slide(
                slide, detections, work / "scored", client, mpp=mpp, restart=True, progress=False
            )
            wall = time.perf_counter() - wall
            scores.append(score.cells_per_second)
            end_to_end.append(score.scored / wall)
            cpu_per_cell.append(1000 * (_cpu_seconds() - cpu) / max(score.scored, 1))
    benches.append(bench())
    ratios = [s / ((benches[k] + benches[k + 1]) / 2) for k, s in enumerate(scores)]
    served = sum(benches) / len(benches)
    return {
        "bench_cells_per_s_min": min(benches),
        "bench_cells_per_s_max": max(benches),
        "bench_cells_per_s": served,
        "score_cells": score.scored,
        "score_cells_per_s": sum(scores) / len(scores),
        "score_end_to_end_cells_per_s": sum(end_to_end) / len(end_to_end),
        "ratio_per_round_min": min(ratios),
        "ratio_per_round_median": statistics.median(ratios),
        "ratio_per_round_max": max(ratios),
        "ratio": sum(scores) / len(scores) / served,
        "ratio_end_to_end": sum(end_to_end) / len(end_to_end) / served,
        "client_cpu_ms_per_cell_end_to_end": sum(cpu_per_cell) / len(cpu_per_cell),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smr.clients.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running SMR server (default: start one on --repository)")
    p.add_argument("--repository", default="model_repository", help="model repository for a local server")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (bench: client processes)")
    p.add_argument(
        "--duration", type=float, default=20.0, help="seconds per bench run (default: %(default)s)"
    )
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--slide", type=Path, help="slide to score (default: a synthetic one)")
    p.add_argument("--detections", type=Path, help="its detections (with --slide)")
    p.add_argument("--mpp", type=float, help="microns per pixel of the patches (default: level 0 as it is)")
    p.add_argument("--rounds", type=int, default=3, help="bench/score rounds (default: %(default)s)")
    args = p.parse_args(argv)
    if (args.slide is None) != (args.detections is None):
        p.error("--slide and --detections go together")

    with tempfile.TemporaryDirectory(prefix="smr-overhead-") as tmp:
        kwargs = {
            "batch_size": args.batch_size, "concurrency": args.concurrency, "duration": args.duration,
            "warmup": args.warmup, "slide": args.slide, "detections": args.detections, "work": Path(tmp),
            "mpp": args.mpp, "rounds": args.rounds,
        }  # fmt: skip
        if args.url:
            figures = measure(args.url, **kwargs)
        else:
            from smr.serving.launcher import TritonProcess

            with TritonProcess(args.repository) as server:
                figures = measure(server.grpc_url, **kwargs)
    print(f"batch {args.batch_size}, concurrency {args.concurrency}")
    for key, value in figures.items():
        print(f"  {key:32s} {value:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
