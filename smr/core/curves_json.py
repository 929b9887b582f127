"""The curves document (``curves.json``): every lineage's fitted curve, targets and class names.

Layout (version 1)::

    {
      "schema": "smr.curves",
      "version": 1,
      "space": "embedding",            # the space the curves live in ("embedding" or e.g. "tsne")
      "meta": {...},                   # free-form JSON provenance (run id, epoch, ...)
      "lineages": [
        {"name": "granulopoiesis",
         "classes": ["blast", ...],      # stage order, immature -> mature
         "targets": [0.0, ..., 1.0],     # t_c of each class on the curve
         "boundaries": [...],            # stage boundaries (midpoints of the targets)
         "curve": {"kind": "linear", "control_points": [[...], [...]]}}
      ]
    }

Floats are written by ``json`` as ``repr``, which reads back to the identical float64.

numpy and the standard library only (copied next to the Triton python model).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

from .curves import Curve

__all__ = [
    "SCHEMA",
    "VERSION",
    "CurvesFormatError",
    "LineageCurve",
    "curves_to_json",
    "curves_from_json",
    "save_curves",
    "load_curves",
    "project_all",
]

SCHEMA = "smr.curves"
VERSION = 1
_TOP_FIELDS = ("schema", "version", "space", "meta", "lineages")
_LINEAGE_FIELDS = ("name", "classes", "targets", "boundaries", "curve")


class CurvesFormatError(ValueError):
    """A curves document is not a valid ``smr.curves`` document of a supported version."""


@dataclass
class LineageCurve:
    """One lineage: ``classes`` in stage order, their ``targets`` on ``curve``, the stage ``boundaries``."""

    name: str
    classes: tuple[str, ...]
    targets: np.ndarray
    boundaries: np.ndarray
    curve: Curve

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"lineage name must be a non-empty string, got {self.name!r}")
        if isinstance(self.classes, str) or not all(isinstance(c, str) for c in self.classes):
            raise ValueError(f"lineage {self.name!r}: classes must be a sequence of class names")
        self.classes = tuple(self.classes)
        n = len(self.classes)
        if n < 2:
            raise ValueError(f"lineage {self.name!r} has {n} class(es); a lineage needs at least 2")
        if len(set(self.classes)) != n:
            raise ValueError(f"lineage {self.name!r} lists a class twice: {list(self.classes)}")
        self.targets = np.array(self.targets, dtype=np.float64)
        self.boundaries = np.array(self.boundaries, dtype=np.float64)
        if self.targets.shape != (n,):
            raise ValueError(
                f"lineage {self.name!r}: {n} classes need {n} targets, got shape {self.targets.shape}"
            )
        if self.boundaries.shape != (n - 1,):
            raise ValueError(
                f"lineage {self.name!r}: {n} classes need {n - 1} stage boundaries, "
                f"got shape {self.boundaries.shape}"
            )
        for what, arr in (("targets", self.targets), ("boundaries", self.boundaries)):
            if not np.all(np.isfinite(arr)) or np.any(np.diff(arr) <= 0):
                raise ValueError(f"lineage {self.name!r}: {what} must be finite and strictly increasing")
        if self.targets[0] < 0 or self.targets[-1] > 1:
            raise ValueError(
                f"lineage {self.name!r}: targets must lie in [0, 1], got {self.targets.tolist()}"
            )
        if np.any(self.boundaries <= self.targets[:-1]) or np.any(self.boundaries >= self.targets[1:]):
            raise ValueError(
                f"lineage {self.name!r}: each stage boundary must lie between two consecutive targets"
            )
        if not isinstance(self.curve, Curve):
            raise ValueError(f"lineage {self.name!r}: curve must be a Curve, got {type(self.curve).__name__}")


def _lineage_to_json(lc: LineageCurve) -> dict[str, Any]:
    return {
        "name": lc.name,
        "classes": list(lc.classes),
        "targets": lc.targets.tolist(),
        "boundaries": lc.boundaries.tolist(),
        "curve": lc.curve.to_dict(),
    }


def curves_to_json(
    lineage_curves: Sequence[LineageCurve], *, space: str = "embedding", meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The curves document of ``lineage_curves`` (all in the same space, so of one dimension)."""
    if not isinstance(space, str) or not space:
        raise ValueError(f"space must be a non-empty string, got {space!r}")
    lineage_curves = list(lineage_curves)
    _check_lineages(lineage_curves, ValueError)
    meta_dict = dict(meta or {})
    try:
        json.dumps(meta_dict, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be plain JSON data: {exc}") from exc
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "space": space,
        "meta": meta_dict,
        "lineages": [_lineage_to_json(lc) for lc in lineage_curves],
    }


def _check_lineages(lineage_curves: list[LineageCurve], error: type[ValueError]) -> None:
    names = [lc.name for lc in lineage_curves]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise error(f"duplicate lineage name(s): {', '.join(dupes)}")
    dims = {lc.name: lc.curve.dim for lc in lineage_curves}
    if len(set(dims.values())) > 1:
        raise error(f"curves of one document must share one dimension, got {dims}")


def _number_list(value: Any, what: str) -> list[float]:
    if not isinstance(value, list):
        raise CurvesFormatError(f"{what} must be a list of numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CurvesFormatError(f"{what} must hold numbers, found {v!r}")
    return value


def _lineage_from_json(item: Any, index: int) -> LineageCurve:
    where = f"lineages[{index}]"
    if not isinstance(item, Mapping):
        raise CurvesFormatError(f"{where} must be an object with fields {', '.join(_LINEAGE_FIELDS)}")
    if isinstance(item.get("name"), str):
        where = f"lineage {item['name']!r}"
    missing = [f for f in _LINEAGE_FIELDS if f not in item]
    if missing:
        raise CurvesFormatError(f"{where} is missing field(s): {', '.join(missing)}")
    classes = item["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CurvesFormatError(f"{where}: 'classes' must be a list of class names")
    try:
        curve = Curve.from_dict(item["curve"])
        return LineageCurve(
            name=item["name"],
            classes=tuple(classes),
            targets=np.array(_number_list(item["targets"], f"{where}: 'targets'"), dtype=np.float64),
            boundaries=np.array(_number_list(item["boundaries"], f"{where}: 'boundaries'"), dtype=np.float64),
            curve=curve,
        )
    except CurvesFormatError:
        raise
    except ValueError as exc:
        raise CurvesFormatError(f"{where}: {exc}") from exc


def curves_from_json(doc: Mapping[str, Any]) -> list[LineageCurve]:
    """The lineages of a curves document; :class:`CurvesFormatError` names what is wrong."""
    if not isinstance(doc, Mapping):
        raise CurvesFormatError(f"a curves document must be a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise CurvesFormatError(
            f"not a curves document: 'schema' is {doc.get('schema')!r}, expected {SCHEMA!r}"
        )
    if "version" not in doc:
        raise CurvesFormatError("curves document has no 'version'")
    version = doc["version"]
    if isinstance(version, bool) or version != VERSION:
        raise CurvesFormatError(
            f"unsupported curves document version {version!r}; this SMR reads version {VERSION}"
        )
    missing = [f for f in _TOP_FIELDS if f not in doc]
    if missing:
        raise CurvesFormatError(f"curves document is missing field(s): {', '.join(missing)}")
    if not isinstance(doc["space"], str):
        raise CurvesFormatError(f"'space' must be a string, got {doc['space']!r}")
    if not isinstance(doc["meta"], Mapping):
        raise CurvesFormatError("'meta' must be an object")
    if not isinstance(doc["lineages"], list):
        raise CurvesFormatError("'lineages' must be a list")
    lineages = [_lineage_from_json(item, i) for i, item in enumerate(doc["lineages"])]
    _check_lineages(lineages, CurvesFormatError)
    return lineages


def save_curves(
    path: str | os.PathLike,
    lineage_curves: Sequence[LineageCurve],
    *,
    space: str = "embedding",
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write the curves document to ``path`` atomically (an existing file is replaced only on success)."""
    doc = curves_to_json(lineage_curves, space=space, meta=meta)
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_curves(path: str | os.PathLike) -> list[LineageCurve]:
    """Read a curves document; :class:`CurvesFormatError` (naming the file) if it is not valid."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CurvesFormatError(f"{path}: not valid JSON ({exc})") from exc
    try:
        return curves_from_json(doc)
    except CurvesFormatError as exc:
        raise CurvesFormatError(f"{path}: {exc}") from exc


def project_all(lineage_curves: Sequence[LineageCurve], X: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Project embeddings ``X`` (N, D) onto every lineage's curve: ``(t (N, L), distance (N, L))``."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {X.shape}")
    t = np.empty((len(X), len(lineage_curves)))
    dist = np.empty((len(X), len(lineage_curves)))
    for i, lc in enumerate(lineage_curves):
        t[:, i], dist[:, i] = lc.curve.project(X)
    return t, dist
