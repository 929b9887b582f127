"""``smr demo``: the whole pipeline end to end on built-in synthetic data.

synthetic patches -> short training run -> export -> local Triton -> score a synthetic slide ->
differential count beside the slide's ground truth and an HTML report. Each step reuses its output
when a previous demo left a complete one made with the same settings, so a second run only repeats
what is missing or what a changed option affects.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the pipeline end to end on built-in synthetic data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    p.add_argument("--cells", type=int, default=1500, help="synthetic patches (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="patch size in pixels (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default: %(default)s)")
    p.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="weight of the SMR term (default: %(default)s; the paper's 0.2 held training back from "
        "random initialisation, see docs/training.md)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=2,
        help="epochs of TML alone before the SMR term (default: %(default)s, see docs/training.md)",
    )
    p.add_argument(
        "--blur",
        type=float,
        default=1.0,
        help="training blur augmentation, Gaussian of up to B px (default: %(default)s; slide cells "
        "are softer than patches, see docs/training.md)",
    )
    p.add_argument("--slide-cells", type=int, default=600, help="cells on the slide (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="redo every step even when its output exists")
    p.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str) -> None:
    print(f"   {what} ({time.perf_counter() - t0:.0f} s)", flush=True)


class StepFailed(RuntimeError):
    """A step of the demo (an ``smr`` sub-command) ended with a non-zero exit status."""


def _smr(argv: Sequence[object]) -> None:
    """Run ``smr ARGV`` (each item as its ``str``) in this process; :class:`StepFailed` if it fails."""
    from smr.cli import main

    words = [str(a) for a in argv]
    try:
        code = main(words)
    except SystemExit as exc:  # the step printed its message (smr.cli.CommandExit)
        code = exc.code if isinstance(exc.code, int) else 1
    if code:
        raise StepFailed(f"`smr {' '.join(words)}` failed with exit status {code} (its message is above)")


def _reusable(out: Path, step: str, settings: dict, complete: bool) -> bool:
    """Whether a ``complete`` output of ``step`` was made with ``settings`` (see :func:`_record`)."""
    try:
        return complete and json.loads((out / f".demo-{step}.json").read_text()) == settings
    except (OSError, ValueError):
        return False


def _record(out: Path, step: str, settings: dict) -> None:
    """Note the settings ``step`` just succeeded with; a failed step keeps the old note, so the
    next demo does not take an output made with other settings for its own."""
    (out / f".demo-{step}.json").write_text(json.dumps(settings, sort_keys=True))


def _patches_complete(data: Path) -> bool:
    """A finished ``smr synth`` output whose spec states its scale (older demos' did not)."""
    from smr.core.lineages import SpecError, load_spec

    try:
        spec = load_spec(data / "lineages.toml")
    except SpecError:
        return False
    return (data / "manifest.csv").is_file() and spec.microns_per_pixel is not None


def _run_complete(run_dir: Path) -> bool:
    """A finished run that recorded the scale of its input (older demos' runs did not)."""
    from smr.train.rundir import CONFIG_FILE, is_complete

    try:
        scale = json.loads((run_dir / CONFIG_FILE).read_text()).get("scale") or {}
    except (OSError, ValueError):
        return False
    return is_complete(run_dir) and scale.get("input_microns_per_pixel") is not None


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except StepFailed as exc:
        print(f"smr demo: error: {exc}", file=sys.stderr)
        return 1


@dataclass(frozen=True)
class _Paths:
    """Where each step of a demo in ``out`` writes."""

    out: Path

    @property
    def data(self) -> Path:
        return self.out / "synthetic"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def repo(self) -> Path:
        return self.out / "model_repository"

    @property
    def slide_dir(self) -> Path:
        return self.out / "slide"

    @property
    def scored(self) -> Path:
        return self.out / "scored"


def _run(args: argparse.Namespace) -> int:
    """The five steps in order; each reuses a complete output made with the same settings."""
    paths = _Paths(Path(args.out).resolve())
    paths.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _synth_step(args, paths)
    _train_step(args, paths)
    _export_step(paths)
    _slide_step(args, paths)
    _score_step(paths)
    print("\n(the 'reference' columns above are the slide's ground truth)")
    print(f"report: {paths.scored / 'report.html'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _synth_settings(args: argparse.Namespace) -> dict:
    """The options that make the synthetic patches (and so everything trained on them)."""
    return {"cells": args.cells, "size": args.image_size, "seed": args.seed}


def _synth_step(args: argparse.Namespace, paths: _Paths) -> None:
    """1/5: the synthetic patch data set."""
    data, synth = paths.data, _synth_settings(args)
    t0 = _step(f"1/5 synthetic marrow: {args.cells} patches of {args.image_size} px -> {data}")
    if args.fresh or not _reusable(paths.out, "synth", synth, _patches_complete(data)):
        _smr(
            [
                "synth",
                data,
                "--n-cells",
                args.cells,
                "--size",
                args.image_size,
                "--seed",
                args.seed,
                "--overwrite",
            ]
        )
        _record(paths.out, "synth", synth)
    _done(t0, "patches ready")


def _train_step(args: argparse.Namespace, paths: _Paths) -> None:
    """2/5: a short SMR training run (linear curves, uniform targets, the normal SMR loss)."""
    run_dir = paths.run_dir
    training = {
        **_synth_settings(args),
        "epochs": args.epochs,
        "alpha": args.alpha,
        "warmup": args.warmup_epochs,
        "blur": args.blur,
    }
    t0 = _step(
        f"2/5 training SMR (linear/uniform/normal, alpha {args.alpha}, "
        f"{args.warmup_epochs} warm-up epochs, blur {args.blur} px) -> {run_dir}"
    )
    if args.fresh or not _reusable(paths.out, "train", training, _run_complete(run_dir)):
        _smr(
            ["train", paths.data, "--out", run_dir, "--overwrite", "--image-size", args.image_size]
            + ["--epochs", args.epochs, "--loss", "normal", "--curve", "linear", "--targets", "uniform"]
            + ["--alpha", args.alpha, "--smr-warmup-epochs", args.warmup_epochs, "--seed", args.seed]
            + ["--blur", args.blur]
            + ["--no-progress"]
        )
        _record(paths.out, "train", training)
    _done(t0, "run directory written")


def _export_step(paths: _Paths) -> None:
    """3/5: the Triton model repository (always exported again: quick, and checked on the way).

    The backbone runs in OpenVINO at the fastest precision that passes export's accuracy check on
    this machine (``--precision auto``: bf16 where the CPU has a bf16 path, int8 or fp32 elsewhere);
    export's last line says which. The embedded server has the python backend only, which runs it.
    """
    t0 = _step(f"3/5 export to a Triton model repository -> {paths.repo}")
    _smr(
        ["export", paths.run_dir, "--repository", paths.repo, "--runtime", "openvino", "--precision", "auto"]
    )
    _done(t0, "repository exported and checked")


def _slide_step(args: argparse.Namespace, paths: _Paths) -> None:
    """4/5: a synthetic whole slide with its detections."""
    slide_dir = paths.slide_dir
    t0 = _step(f"4/5 synthetic slide with {args.slide_cells} cells -> {slide_dir}")
    slide = {"cells": args.slide_cells, "seed": args.seed + 1}
    if args.fresh or not _reusable(paths.out, "slide", slide, (slide_dir / "detections.csv").is_file()):
        _smr(["synth-slide", slide_dir, "--cells", args.slide_cells, "--seed", args.seed + 1, "--overwrite"])
        _record(paths.out, "slide", slide)
    _done(t0, "slide and detections written")


def _score_step(paths: _Paths) -> None:
    """5/5: serve the repository with a local Triton and score the slide over gRPC."""
    t0 = _step("5/5 serving with a local Triton and scoring the slide over gRPC")
    from smr.serving.launcher import TritonProcess

    # no --mpp: score-slide crops at the scale the model was trained at (the ensemble states it,
    # from the data set's lineages.toml) and reads the slide's own resolution from the TIFF
    with TritonProcess(paths.repo) as server:
        print(f"   tritonserver ready: gRPC {server.grpc_url}, metrics {server.metrics_url}")
        _smr(
            [
                "score-slide",
                paths.slide_dir / "slide.tiff",
                "--detections",
                paths.slide_dir / "detections.csv",
            ]
            + ["--url", server.grpc_url, "--out", paths.scored, "--overwrite", "--no-progress"]
        )
    _done(t0, "slide scored")
