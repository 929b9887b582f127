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
    "CVError",
    "check_settings",
    "run_jobs",
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
    if len(values) < 2:  # a sample standard deviation needs two values
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _strictly_increasing(values: Sequence[float | None]) -> bool:
    pairs = zip(values[:-1], values[1:], strict=True)
    return all(a is not None and b is not None and a < b for a, b in pairs)


def collect(
    out: Path, variants: Sequence[Variant], folds: int, lineages: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per variant: mean and std over the folds of macro F1, of Spearman per lineage and of
    each lineage stage's F1; the stages' mean curve positions; in how many folds they are in order.
    """
    from .rundir import CONFIG_FILE, is_complete

    rows = []
    for v in variants:
        results = [
            json.loads((out / v.slug / f"fold{f}" / CONFIG_FILE).read_text())["result"]
            for f in range(folds)
            if is_complete(out / v.slug / f"fold{f}")
        ]
        row: dict[str, Any] = {"variant": v.name, "loss": v.loss, "curve": v.curve, "targets": v.targets}
        row["folds"] = len(results)
        row["macro_f1_mean"], row["macro_f1_std"] = _mean_std(
            [float(r["best_val_macro_f1"]) for r in results]
        )
        for name in lineages:
            rhos = [r.get("val_spearman", {}).get(name) for r in results]
            row[f"spearman_{name}_mean"], row[f"spearman_{name}_std"] = _mean_std(
                [float(rho) for rho in rhos if rho is not None]
            )
            stages = _stages(results, name)
            for stage in stages:
                f1s = [
                    r["val_per_class_f1"][stage] for r in results if stage in r.get("val_per_class_f1", {})
                ]
                row[f"f1_{stage}_mean"], row[f"f1_{stage}_std"] = _mean_std(f1s)
                ts = [r["val_mean_position"][name][stage] for r in results if stage in _positions(r, name)]
                row[f"position_{stage}_mean"], _ = _mean_std([t for t in ts if t is not None])
            orders = [_strictly_increasing([_positions(r, name).get(s) for s in stages]) for r in results]
            row[f"stages_{name}"] = ",".join(stages)
            row[f"ordered_{name}"] = sum(orders) if stages else None
        rows.append(row)
    return rows


def _positions(result: dict[str, Any], lineage: str) -> dict[str, float | None]:
    return result.get("val_mean_position", {}).get(lineage, {})


def _stages(results: Sequence[dict[str, Any]], lineage: str) -> list[str]:
    """The lineage's classes in stage order, as the runs recorded them (empty for older runs)."""
    for r in results:
        if _positions(r, lineage):
            return list(_positions(r, lineage))
    return []


def _row_stages(rows: Sequence[dict[str, Any]], lineage: str) -> list[str]:
    """The lineage's stages that any row has figures for, in stage order."""
    for r in rows:
        if r.get(f"stages_{lineage}"):
            return r[f"stages_{lineage}"].split(",")
    return []


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def write_tables(
    out: Path, rows: Sequence[dict[str, Any]], lineages: Sequence[str], folds: int
) -> list[Path]:
    """``cv_results.csv`` (all numbers) and ``cv_results.md`` (mean ± std), plus the bar charts."""
    from .figures import cv_bar_chart
    from .rundir import write_json

    csv_path = out / "cv_results.csv"
    with csv_path.open("w", newline="") as fh:
        fields = list(dict.fromkeys(k for r in rows for k in r)) or ["variant"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    header = ["variant", "folds", "macro F1"] + [f"Spearman {name}" for name in lineages]
    stages = {name: _row_stages(rows, name) for name in lineages}
    for name in lineages:
        header += [f"F1 {stage}" for stage in stages[name]]
        if stages[name]:
            header += [f"{name} positions", f"{name} in order"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["variant"], f"{r['folds']}/{folds}", _fmt(r["macro_f1_mean"], r["macro_f1_std"])]
        cells += [_fmt(r[f"spearman_{n}_mean"], r[f"spearman_{n}_std"]) for n in lineages]
        for name in lineages:
            cells += [_fmt(r.get(f"f1_{s}_mean"), r.get(f"f1_{s}_std")) for s in stages[name]]
            if stages[name]:
                ts = [r.get(f"position_{s}_mean") for s in stages[name]]
                cells.append(", ".join("-" if t is None else f"{t:.2f}" for t in ts))
                ordered = r.get(f"ordered_{name}")
                cells.append("-" if ordered is None else f"{ordered}/{r['folds']} folds")
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


class CVError(ValueError):
    """A cross-validation that cannot go on in its output folder (the message says how to fix it)."""


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A resumed cv must use the same data, folds and hyper-parameters as the runs already there:
    records ``settings`` in ``out/cv.json`` (the grid grows), or raises :class:`CVError`."""
    from .rundir import write_json

    path = out / "cv.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if isinstance(previous.get("base_config"), dict):  # fields added since take their defaults
            defaults, before = TrainConfig().to_dict(), previous["base_config"]
            added = {k: defaults[k] for k in settings.get("base_config", {}) if k not in before}
            previous["base_config"] = {**before, **added}
        keys = ("data", "folds", "base_config")
        changed = [k for k in keys if previous.get(k) != settings.get(k)]
        if changed:
            raise CVError(
                f"{out} holds a cross-validation with different {', '.join(changed)}; "
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
