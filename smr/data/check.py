"""``smr data check``: is a folder a usable SMR data set, and what is in it?

The check looks at every class folder, whether or not the spec names it, so that one run lists
every problem: spec errors, folders and classes that do not match, empty classes and damaged images.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smr.core.lineages import LineageSpec, SpecError

from .folder import DatasetError, ImageError, class_folders, find_images, inspect_image, resolve_spec

__all__ = ["CheckReport", "FolderSummary", "check_dataset", "format_report"]

SCALE_UNKNOWN = (
    "the pixel size is unknown: add [imaging] microns_per_pixel = ... to lineages.toml, or every "
    "score-slide with this model will need --mpp"
)

# Fewer images than this in a class is worth a warning: the paper's protocol is 6-fold CV.
MIN_PER_CLASS = 6


@dataclass
class FolderSummary:
    name: str
    images: int = 0  # readable images
    damaged: int = 0
    role: str = ""  # "lineage <name>, stage i", "other", "ignored" or "not in spec"


@dataclass
class CheckReport:
    root: Path
    spec: LineageSpec | None
    folders: list[FolderSummary] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    image_modes: Counter = field(default_factory=Counter)  # "JPEG RGB" -> count
    errors: list[str] = field(default_factory=list)  # the data set cannot be used
    problems: list[str] = field(default_factory=list)  # damaged files ("path: reason"), skipped
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.errors

    @property
    def total_images(self) -> int:
        return sum(f.images for f in self.folders if f.role not in ("ignored", "not in spec"))

    def size_stats(self) -> dict:
        if not self.heights:
            return {}
        h, w = np.asarray(self.heights), np.asarray(self.widths)
        common = Counter(zip(self.heights, self.widths, strict=True)).most_common(3)
        return {
            "height": {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
            "width": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
            "most_common": [{"height": hh, "width": ww, "count": n} for (hh, ww), n in common],
        }

    @property
    def microns_per_pixel(self) -> float | None:
        """The spec's ``[imaging] microns_per_pixel`` (``None``: unknown)."""
        return self.spec.microns_per_pixel if self.spec else None

    def field_of_view_um(self) -> tuple[float, float] | None:
        """(height, width) in micrometres of an image of the median size, when the scale is known."""
        stats = self.size_stats()
        if self.microns_per_pixel is None or not stats:
            return None
        mpp = self.microns_per_pixel
        return stats["height"]["median"] * mpp, stats["width"]["median"] * mpp

    def to_dict(self) -> dict:
        fov = self.field_of_view_um()
        return {
            "root": str(self.root),
            "usable": self.usable,
            "microns_per_pixel": self.microns_per_pixel,
            "field_of_view_um": None if fov is None else list(fov),
            "spec": self.spec.to_dict() if self.spec else None,
            "classes": list(self.spec.classes) if self.spec else None,
            "folders": [vars(f).copy() for f in self.folders],
            "total_images": self.total_images,
            "image_sizes": self.size_stats(),
            "image_modes": dict(self.image_modes.most_common()),
            "errors": list(self.errors),
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


def _roles(spec: LineageSpec | None) -> dict[str, str]:
    if spec is None:
        return {}
    roles = {}
    for lin in spec.lineages:
        for i, c in enumerate(lin.classes):
            roles[c] = f"lineage {lin.name}, stage {i + 1}/{len(lin.classes)}"
    roles.update(dict.fromkeys(spec.other, "other"))
    roles.update(dict.fromkeys(spec.ignore, "ignored"))
    return roles


def check_dataset(
    root: str | os.PathLike,
    spec: LineageSpec | str | os.PathLike | None = None,
    *,
    progress: bool = False,
) -> CheckReport:
    """Inspect ``root`` (and its spec) and collect everything a user should know before training.

    Raises :class:`DatasetError` only when ``root`` is not a folder; everything else is reported.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    report = CheckReport(root, None)
    try:
        report.spec = resolve_spec(root, spec)
    except (SpecError, DatasetError) as e:
        report.errors.append(str(e))

    roles = _roles(report.spec)
    names = class_folders(root)
    classes = report.spec.classes if report.spec else ()
    ordered = [c for c in classes if c in names] + [n for n in names if n not in classes]
    if report.spec is not None:
        try:
            report.spec.check_folders(names)
        except SpecError as e:
            report.errors.append(f"{root}: {e}")

    jobs: list[tuple[FolderSummary, Path]] = []
    for name in ordered:
        summary = FolderSummary(name, role=roles.get(name, "not in spec" if report.spec else ""))
        report.folders.append(summary)
        if summary.role != "ignored":
            jobs += [(summary, p) for p in find_images(root / name)]

    items = jobs
    if progress:
        from tqdm import tqdm

        items = tqdm(jobs, desc=f"checking {root.name}", unit="img")
    for summary, path in items:
        try:
            info = inspect_image(path)
        except ImageError as e:
            summary.damaged += 1
            report.problems.append(f"{path}: {e.reason}")
            continue
        summary.images += 1
        report.heights.append(info.height)
        report.widths.append(info.width)
        report.image_modes[f"{info.format} {info.mode}"] += 1

    for f in report.folders:
        if f.role in ("ignored", "not in spec"):
            continue
        if f.images == 0:
            what = "has no readable images" if f.damaged else "has no images"
            report.errors.append(f"{root / f.name}: class {f.name!r} {what}")
        elif f.images < MIN_PER_CLASS:
            report.warnings.append(
                f"class {f.name!r} has only {f.images} image(s); {MIN_PER_CLASS}-fold cross-validation "
                f"needs at least {MIN_PER_CLASS} per class"
            )
    if report.problems:
        report.warnings.append(
            f"{len(report.problems)} damaged image(s) will be skipped (listed under problems)"
        )
    if report.spec is not None and report.spec.microns_per_pixel is None:
        report.warnings.append(SCALE_UNKNOWN)
    return report


def _table(rows: list[list[str]], header: list[str], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def format_report(report: CheckReport) -> str:
    """The human-readable report printed by ``smr data check``."""
    out = [f"data set: {report.root}"]
    spec = report.spec
    if spec is not None:
        n_cls = len(spec.classes)
        out.append(f"spec: {n_cls} classes, {len(spec.lineages)} lineage(s), {len(spec.other)} other")
    out.append("")
    rows = [
        [str(i + 1), f.name, str(f.images), str(f.damaged) if f.damaged else "", f.role]
        for i, f in enumerate(report.folders)
    ]
    out += _table(rows, ["#", "class", "images", "damaged", "role"], right={0, 2, 3})
    n_classes = sum(1 for f in report.folders if f.role not in ("ignored", "not in spec"))
    out.append(f"total: {report.total_images} images in {n_classes} classes")
    if spec is not None:
        out += ["", "lineages (immature -> mature):"]
        for lin in spec.lineages:
            out.append(f"  {lin.name} ({len(lin.classes)} classes): {' -> '.join(lin.classes)}")
        if spec.other:
            out.append(f"  other ({len(spec.other)} classes): {', '.join(spec.other)}")
        if spec.ignore:
            out.append(f"  ignored folders: {', '.join(spec.ignore)}")
    stats = report.size_stats()
    if stats:
        h, w = stats["height"], stats["width"]
        out += ["", "image sizes (pixels):"]
        out.append(f"  height  min {h['min']}  median {h['median']:g}  max {h['max']}")
        out.append(f"  width   min {w['min']}  median {w['median']:g}  max {w['max']}")
        common = ", ".join(f"{m['height']}x{m['width']} ({m['count']})" for m in stats["most_common"])
        out.append(f"  most common (HxW): {common}")
        out.append("  formats: " + ", ".join(f"{k} ({n})" for k, n in report.image_modes.most_common()))
    if spec is not None:
        fov = report.field_of_view_um()
        if report.microns_per_pixel is None:
            out += ["", "scale: unknown (no [imaging] microns_per_pixel in the spec)"]
        else:
            out += ["", f"scale: {report.microns_per_pixel:g} µm/px"]
            if fov is not None:
                out[-1] += f"; a median image covers {fov[0]:.3g} x {fov[1]:.3g} µm (HxW)"
    for title, items in (
        ("problems", report.problems),
        ("warnings", report.warnings),
        ("errors", report.errors),
    ):
        if items:
            out += ["", f"{title} ({len(items)}):"] + [f"  {x}" for x in items]
    out += ["", "OK: the data set can be used" if report.usable else "NOT USABLE: fix the errors above"]
    return "\n".join(out)
