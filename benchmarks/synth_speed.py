"""How fast is the synthetic-marrow generator, and how much memory does a slide take?

    python benchmarks/synth_speed.py    # 1,000 patches of 96 px, 2 workers; a 2,000-cell slide
    python benchmarks/synth_speed.py --n-cells 5000 --workers 1 --slide-cells 0

Each job runs in a fresh process, which reports its wall time and peak resident memory.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path


def _patches(n_cells: int, size: int, workers: int, queue) -> None:
    from smr.synth.patches import SynthSettings, write_patches

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_patches(Path(tmp) / "set", SynthSettings(n_cells=n_cells, size=size, seed=0), workers=workers)
        seconds = time.perf_counter() - start
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _slide(cells: int, mpp: float, queue) -> None:
    from smr.synth.slide import SlideSettings, write_slide

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = write_slide(Path(tmp) / "slide", SlideSettings(cells=cells, seed=0, mpp=mpp))
        seconds = time.perf_counter() - start
        size_mb = (Path(tmp) / "slide" / "slide.tiff").stat().st_size / 2**20
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, summary, size_mb))


def _run(target, *args):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-cells", type=int, default=1000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slide-cells", type=int, default=2000, help="0 skips the slide")
    parser.add_argument("--mpp", type=float, default=0.25)
    args = parser.parse_args()
    print(f"CPUs: {multiprocessing.cpu_count()}")
    if args.n_cells:
        seconds, rss = _run(_patches, args.n_cells, args.size, args.workers)
        print(
            f"patches: {args.n_cells} x {args.size} px, {args.workers} worker(s): {seconds:.1f} s "
            f"({args.n_cells / seconds:.0f} patches/s), peak RSS of the main process {rss:.0f} MiB"
        )
    if args.slide_cells:
        seconds, rss, summary, size_mb = _run(_slide, args.slide_cells, args.mpp)
        mpx = summary.width * summary.height / 1e6
        print(
            f"slide: {args.slide_cells} cells, {summary.width} x {summary.height} px ({mpx:.0f} Mpx) at "
            f"{args.mpp} um/px, {len(summary.levels)} levels, {size_mb:.0f} MiB: {seconds:.1f} s "
            f"({mpx / seconds:.2f} Mpx/s), peak RSS {rss:.0f} MiB"
        )


if __name__ == "__main__":
    main()
