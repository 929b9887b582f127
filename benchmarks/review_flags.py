"""How well "flagged for review" finds the misclassified cells, for a range of SVM margins.

A cell is flagged when its two most probable classes differ by less than ``margin`` in SVM
probability (``smr.clients.results``; the curve criterion adds the few cells whose curve stage is
3 or more stages from their class). The margin is chosen on a run's *validation* images and then
checked on slides scored with that run (their ``cells.csv`` carries every class's probability and,
on synthetic slides, the true class):

    python benchmarks/review_flags.py RUN DATA --slides demo-output/scored/cells.csv

For each margin the table gives the share of cells flagged and the share of the misclassified
cells among them, on the validation images and on each slide.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from smr.data.folder import FolderDataset
from smr.train.evaluate import evaluate_run, select_subset
from smr.train.rundir import load_run

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def margins_of(probabilities: np.ndarray) -> np.ndarray:
    """Per row: the largest probability minus the second largest."""
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def flag_figures(margins: np.ndarray, wrong: np.ndarray, threshold: float) -> tuple[float, float | None]:
    """(share of cells flagged, share of the misclassified cells that are flagged)."""
    flagged = margins < threshold
    found = None if not wrong.any() else float((flagged & wrong).sum() / wrong.sum())
    return float(flagged.mean()), found


def slide_cells(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(margins, misclassified) of the scored cells of a ``cells.csv`` that has reference classes."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "scored"]
    if not rows or not rows[0].get("reference_class"):
        raise SystemExit(f"{path}: no scored cells with a reference_class column to compare with")
    p_cols = [k for k in rows[0] if k.startswith("p_")]
    probs = np.array([[float(r[k]) for k in p_cols] for r in rows])
    wrong = np.array([r["class"] != r["reference_class"] for r in rows])
    return margins_of(probs), wrong


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("data", type=Path, help="the run's data set (its validation split is used)")
    p.add_argument("--slides", type=Path, nargs="*", default=[], help="cells.csv files of scored slides")
    args = p.parse_args(argv)

    run = load_run(args.run)
    val = select_subset(FolderDataset.scan(args.data, spec=run.spec), args.run, "val")
    ev = evaluate_run(run, val)
    sets = {"validation": (margins_of(ev.probabilities), ev.predictions != ev.labels)}
    for path in args.slides:
        sets[path.parent.name or str(path)] = slide_cells(path)
    header = "| margin | " + " | ".join(f"{name}: flagged / errors found" for name in sets) + " |"
    print(", ".join(f"{name}: {len(w)} cells, error rate {w.mean():.1%}" for name, (_, w) in sets.items()))
    print(header)
    print("|---|" + "---|" * len(sets))
    for m in MARGINS:
        cells = []
        for margins, wrong in sets.values():
            flagged, found = flag_figures(margins, wrong, m)
            cells.append(f"{flagged:.1%} / {'n/a' if found is None else f'{found:.1%}'}")
        print(f"| {m:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
