"""``smr cv``: stratified K-fold cross-validation over SMR variants, tabulated like the paper's Fig. 3.

A variant is ``tml`` (the baseline) or ``CURVE/TARGETS/LOSS``, e.g. ``linear/uniform/normal``.
Each (variant, fold) trains into its own run directory ``OUT/<variant>/fold<i>/`` with the same
hyper-parameters and split seed, so all variants see the same folds. A complete run (one whose
``config.json`` holds a result) is skipped, so an interrupted ``smr cv`` resumes where it stopped;
an incomplete one is trained again from scratch.

Outputs in OUT: ``cv.json`` (settings; a resumed cv must match them), ``cv_results.csv`` and
``cv_results.md`` (macro F1 and the maturity Spearman correlation per lineage, mean and sample
standard deviation over the folds), ``cv_macro_f1.png`` (and ``cv_spearman_<lineage>.png``), and
``logs/`` with the output of runs trained in separate processes (``--jobs`` > 1).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CURVES, LOSSES, TARGETS, TrainConfig

__all__ = [
    "Variant",
    "PAPER_GRID",
    "parse_variant",
    "expand_grid",
    "CVJob",
    "plan",
    "collect",
    "write_tables",
    "run",
]


@dataclass(frozen=True)
class Variant:
    loss: str
    curve: str = "linear"
    targets: str = "uniform"

    @property
    def name(self) -> str:
        return "tml" if self.loss == "tml" else f"{self.curve}/{self.targets}/{self.loss}"

    @property
    def slug(self) -> str:
        """Folder name of the variant."""
        return self.name.replace("/", "-")


SMR_LOSSES = tuple(loss for loss in LOSSES if loss != "tml")
ALL_VARIANTS = [Variant("tml")] + [
    Variant(loss, curve, targets) for loss in SMR_LOSSES for curve in CURVES for targets in TARGETS
]
PAPER_GRID = [v.name for v in ALL_VARIANTS]


def parse_variant(text: str) -> Variant:
    """``tml`` or ``CURVE/TARGETS/LOSS``; errors name the valid choices."""
    if text == "tml":
        return Variant("tml")
    parts = text.split("/")
    if len(parts) != 3:
        raise ValueError(f"variant {text!r}: write 'tml' or CURVE/TARGETS/LOSS, e.g. linear/uniform/normal")
    curve, targets, loss = parts
    for value, options, what in (
        (curve, CURVES, "curve"),
        (targets, TARGETS, "targets"),
        (loss, SMR_LOSSES, "loss"),
    ):
        if value not in options:
            raise ValueError(
                f"variant {text!r}: unknown {what} {value!r}; choose one of: {', '.join(options)}"
            )
    return Variant(loss, curve, targets)


def expand_grid(tokens: Iterable[str]) -> list[Variant]:
    """Variants named by ``tokens``: names, ``paper``/``all`` (all 25), or ``*`` patterns; in order."""
    out: list[Variant] = []
    for token in tokens:
        if token in ("paper", "all"):
            matched = list(ALL_VARIANTS)
        elif any(ch in token for ch in "*?["):
            matched = [v for v in ALL_VARIANTS if fnmatch.fnmatchcase(v.name, token)]
            if not matched:
                raise ValueError(
                    f"pattern {token!r} matches no variant; variants look like {PAPER_GRID[1]!r}"
                )
        else:
            matched = [parse_variant(token)]
        out += [v for v in matched if v not in out]
    return out


@dataclass(frozen=True)
class CVJob:
    variant: Variant
    fold: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant.name} fold {self.fold}"


def plan(
    out: Path, variants: Sequence[Variant], folds: int, only: Sequence[int] | None = None
) -> list[CVJob]:
    chosen = range(folds) if only is None else sorted(set(only))
    bad = [f for f in chosen if not 0 <= f < folds]
    if bad:
        raise ValueError(f"--only-fold {bad}: folds are 0..{folds - 1}")
    return [CVJob(v, f, out / v.slug / f"fold{f}") for v in variants for f in chosen]


def job_config(base: TrainConfig, job: CVJob, folds: int) -> TrainConfig:
    v = job.variant
    return base.replace(loss=v.loss, curve=v.curve, targets=v.targets, folds=folds, fold=job.fold)


# ----------------------------------------------------------------------------------------------
# results


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def collect(
    out: Path, variants: Sequence[Variant], folds: int, lineages: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per variant: fold count, macro F1 and Spearman per lineage (mean, std over folds)."""
    from .rundir import CONFIG_FILE, is_complete

    rows = []
    for v in variants:
        f1s: list[float] = []
        rhos: dict[str, list[float]] = {name: [] for name in lineages}
        for f in range(folds):
            run_dir = out / v.slug / f"fold{f}"
            if not is_complete(run_dir):
                continue
            result = json.loads((run_dir / CONFIG_FILE).read_text())["result"]
            f1s.append(float(result["best_val_macro_f1"]))
            for name, rho in (result.get("val_spearman") or {}).items():
                if rho is not None and name in rhos:
                    rhos[name].append(float(rho))
        row: dict[str, Any] = {"variant": v.name, "loss": v.loss, "curve": v.curve, "targets": v.targets}
        row["folds"] = len(f1s)
        row["macro_f1_mean"], row["macro_f1_std"] = _mean_std(f1s)
        for name in lineages:
            row[f"spearman_{name}_mean"], row[f"spearman_{name}_std"] = _mean_std(rhos[name])
        rows.append(row)
    return rows


def _fmt(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def write_tables(
    out: Path, rows: Sequence[dict[str, Any]], lineages: Sequence[str], folds: int
) -> list[Path]:
    """``cv_results.csv`` (all numbers) and ``cv_results.md`` (mean ± std), plus the bar charts."""
    from .figures import cv_bar_chart
    from .rundir import write_json

    csv_path = out / "cv_results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    header = ["variant", "folds", "macro F1"] + [f"Spearman {name}" for name in lineages]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["variant"], f"{r['folds']}/{folds}", _fmt(r["macro_f1_mean"], r["macro_f1_std"])]
        cells += [_fmt(r[f"spearman_{n}_mean"], r[f"spearman_{n}_std"]) for n in lineages]
        lines.append("| " + " | ".join(cells) + " |")
    md_path = out / "cv_results.md"
    md_path.write_text(
        f"Stratified {folds}-fold cross-validation: validation macro F1 of the best epoch and Spearman "
        "correlation of curve position with true maturity (mean ± sample std over folds).\n\n"
        + "\n".join(lines)
        + "\n"
    )
    write_json(out / "cv_results.json", list(rows))
    written = [csv_path, md_path]
    if any(r["macro_f1_mean"] is not None for r in rows):
        written.append(cv_bar_chart(rows, out / "cv_macro_f1.png"))
    for name in lineages:
        metric = f"spearman_{name}"
        if any(r[f"{metric}_mean"] is not None for r in rows):
            written.append(cv_bar_chart(rows, out / f"cv_spearman_{name}.png", metric=metric))
    return written


# ----------------------------------------------------------------------------------------------
# running


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A resumed cv must use the same data, folds and hyper-parameters as the runs already there."""
    from .rundir import write_json

    path = out / "cv.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        keys = ("data", "folds", "base_config")
        changed = [k for k in keys if previous.get(k) != settings.get(k)]
        if changed:
            raise SystemExit(
                f"smr cv: error: {out} holds a cross-validation with different {', '.join(changed)}; "
                "use a new --out (or the same settings to resume)"
            )
        settings["grid"] = list(dict.fromkeys(previous.get("grid", []) + settings["grid"]))
    write_json(path, settings)


def _train_in_process(job: CVJob, data: str, config: TrainConfig, progress: bool) -> None:
    from .engine import train

    train(data, job.run_dir, config, overwrite=True, progress=progress)


def _command(job: CVJob, data: str, config_path: Path, threads: int | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "smr",
        "train",
        data,
        "--out",
        str(job.run_dir),
        "--overwrite",
        "--no-progress",
    ]
    cmd += ["--config", str(config_path)]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def run_jobs(
    jobs: Sequence[CVJob],
    data: str,
    base: TrainConfig,
    folds: int,
    out: Path,
    *,
    processes: int = 1,
    threads: int | None = None,
    progress: bool = True,
) -> list[tuple[CVJob, str]]:
    """Train every job (in this process, or ``processes`` at once); returns the failures."""
    from .rundir import write_json

    failures: list[tuple[CVJob, str]] = []
    if processes <= 1:
        import torch

        if threads:
            torch.set_num_threads(threads)
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.name} -> {job.run_dir}", file=sys.stderr, flush=True)
            try:
                _train_in_process(job, data, job_config(base, job, folds), progress)
            except Exception as exc:  # one failed run must not stop the others
                failures.append((job, f"{type(exc).__name__}: {exc}"))
                print(f"  failed: {exc}", file=sys.stderr)
        return failures

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    pending = list(jobs)
    running: list[tuple[CVJob, subprocess.Popen, Any]] = []
    done = 0
    while pending or running:
        while pending and len(running) < processes:
            job = pending.pop(0)
            config_path = logs / f"{job.variant.slug}-fold{job.fold}.config.json"
            write_json(config_path, job_config(base, job, folds).to_dict())
            log = (logs / f"{job.variant.slug}-fold{job.fold}.log").open("w")
            proc = subprocess.Popen(
                _command(job, data, config_path, threads), stdout=log, stderr=subprocess.STDOUT
            )
            running.append((job, proc, log))
            print(f"started {job.name} (log: {log.name})", file=sys.stderr, flush=True)
        time.sleep(0.5)
        for item in list(running):
            job, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            done += 1
            status = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode}, see {log.name})"
            if proc.returncode != 0:
                failures.append((job, status))
            print(f"[{done}/{len(jobs)}] {job.name}: {status}", file=sys.stderr, flush=True)
    return failures


def run(args: argparse.Namespace) -> int:
    """``smr cv DATA --out DIR --folds K --grid ...``."""
    from smr.core.lineages import SpecError
    from smr.data.folder import DatasetError, resolve_spec

    from .cli import config_from_args
    from .rundir import is_complete

    try:
        variants = expand_grid(args.grid)
    except ValueError as exc:
        raise SystemExit(f"smr cv: error: {exc}") from None
    if args.folds < 2:
        raise SystemExit(f"smr cv: error: --folds {args.folds}: need at least 2")
    if args.jobs < 1:
        raise SystemExit(f"smr cv: error: --jobs {args.jobs}: need at least 1")
    try:
        spec = resolve_spec(args.data, None)
    except (DatasetError, SpecError) as exc:
        raise SystemExit(f"smr cv: error: {exc}") from None
    base = config_from_args(args, folds=args.folds, fold=0)
    out = Path(args.out)
    try:
        jobs = plan(out, variants, args.folds, args.only_fold)
    except ValueError as exc:
        raise SystemExit(f"smr cv: error: {exc}") from None
    todo = [j for j in jobs if not is_complete(j.run_dir)]
    print(
        f"{len(variants)} variant(s) x {len(jobs) // max(len(variants), 1)} fold(s): "
        f"{len(jobs) - len(todo)} complete, {len(todo)} to train",
        file=sys.stderr,
    )
    if args.dry_run:
        for j in jobs:
            print(f"{'done ' if j not in todo else 'todo '} {j.name:<40} {j.run_dir}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "data": str(Path(args.data).resolve()),
        "folds": args.folds,
        "base_config": {
            k: v for k, v in base.to_dict().items() if k not in ("loss", "curve", "targets", "fold")
        },
        "grid": [v.name for v in variants],
    }
    _check_settings(out, settings)
    failures = run_jobs(
        todo,
        args.data,
        base,
        args.folds,
        out,
        processes=args.jobs,
        threads=args.threads,
        progress=not args.no_progress,
    )
    lineages = [lin.name for lin in spec.lineages]
    rows = collect(out, variants, args.folds, lineages)
    written = write_tables(out, rows, lineages, args.folds)
    print((out / "cv_results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    if failures:
        for job, why in failures:
            print(f"smr cv: {job.name} failed: {why}", file=sys.stderr)
        return 1
    return 0
