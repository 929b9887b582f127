"""Detections in (CSV or QuPath GeoJSON) and scored cells out (CSV and QuPath-importable GeoJSON).

A detection is a cell found on a slide by some detector: an id and a centre (x, y) in level-0
pixels. CSV files need ``x`` and ``y`` columns (QuPath's ``Centroid X px`` / ``Centroid Y px``
work too) and may have ``id`` and ``class`` (a reference label, e.g. from a synthetic slide).
GeoJSON files are FeatureCollections (or bare lists of features, as older QuPath versions wrote)
of Points, MultiPoints, Polygons or MultiPolygons; a polygon's centre is its area centroid.
"""

from __future__ import annotations

import csv
import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = [
    "Detection",
    "read_detections",
    "read_detections_csv",
    "read_detections_geojson",
    "polygon_centroid",
    "cells_feature_collection",
    "feature_uuid",
]

_X_COLUMNS = ("x", "centroid_x", "centroid x px", "centroid_x_px", "x_px")
_Y_COLUMNS = ("y", "centroid_y", "centroid y px", "centroid_y_px", "y_px")
_ID_COLUMNS = ("id", "cell_id", "object_id", "name")
_LABEL_COLUMNS = ("class", "label", "classification", "cell_type")
_UUID_NAMESPACE = uuid.UUID("5b0d1a3e-6f57-4f1c-9a8e-3c1d2b7e9f10")  # SMR's namespace for feature ids


@dataclass(frozen=True)
class Detection:
    """A cell to score: a unique id and its centre in level-0 pixel coordinates."""

    id: str
    x: float
    y: float
    label: str | None = None  # a reference class, when the detections carry one
    geometry: Mapping[str, Any] | None = None  # the original GeoJSON geometry (polygons are kept)


def _pick(header: Sequence[str], names: Sequence[str]) -> int | None:
    normalised = [h.strip().lower().replace("µ", "u") for h in header]
    for name in names:
        if name in normalised:
            return normalised.index(name)
    return None


def _check_unique(detections: list[Detection], source: str) -> list[Detection]:
    seen: dict[str, int] = {}
    for i, d in enumerate(detections):
        if d.id in seen:
            raise InputError(
                f"{source}: detection id {d.id!r} appears twice (entries {seen[d.id] + 1} and {i + 1}); "
                "ids must be unique so that every cell is scored exactly once"
            )
        seen[d.id] = i
    if not detections:
        raise InputError(f"{source}: no detections found")
    return detections


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{what}: {text!r} is not a finite number")
    return value


def read_detections_csv(path: str | Path) -> list[Detection]:
    """Read detections from a CSV (or TSV) file with a header row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read detections ({exc})") from None
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first and "," not in first else ("," if "," in first else ";")
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    if not rows:
        raise InputError(f"{path}: empty file; expected a header with x and y columns")
    header = rows[0]
    ix, iy = _pick(header, _X_COLUMNS), _pick(header, _Y_COLUMNS)
    if ix is None or iy is None:
        raise InputError(
            f"{path}: needs columns 'x' and 'y' (level-0 pixels; QuPath's 'Centroid X px' works too); "
            f"found: {', '.join(header)}"
        )
    iid, ilabel = _pick(header, _ID_COLUMNS), _pick(header, _LABEL_COLUMNS)
    detections = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise InputError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
        det_id = row[iid].strip() if iid is not None else str(line - 1)
        if not det_id:
            raise InputError(f"{path}, line {line}: empty id")
        label = row[ilabel].strip() if ilabel is not None else None
        detections.append(
            Detection(
                id=det_id,
                x=_number(row[ix], f"{path}, line {line}, x"),
                y=_number(row[iy], f"{path}, line {line}, y"),
                label=label or None,
            )
        )
    return _check_unique(detections, str(path))


def _ring_area_centroid(ring: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Signed-free area and centroid of a closed or open ring (shoelace formula)."""
    pts = [(float(p[0]), float(p[1])) for p in ring]
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if len(pts) < 3:
        raise ValueError("a polygon ring needs at least 3 distinct points")
    a = cx = cy = 0.0
    x0, y0 = pts[0]  # shift to the first vertex for numerical stability with large coordinates
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
        x1, y1, x2, y2 = x1 - x0, y1 - y0, x2 - x0, y2 - y0
        cross = x1 * y2 - x2 * y1
        a += cross
        cx += (x1 + x2) * cross
        cy += (y1 + y2) * cross
    if abs(a) < 1e-12:  # degenerate (all points on a line): the mean of the vertices
        return 0.0, sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return abs(a) / 2, cx / (3 * a) + x0, cy / (3 * a) + y0


def polygon_centroid(polygons: Sequence[Sequence[Sequence[Sequence[float]]]]) -> tuple[float, float]:
    """Area centroid of polygons given as GeoJSON coordinates (each: exterior ring, then holes)."""
    total = sx = sy = 0.0
    fallback = []
    for rings in polygons:
        for k, ring in enumerate(rings):
            area, cx, cy = _ring_area_centroid(ring)
            sign = 1.0 if k == 0 else -1.0
            total += sign * area
            sx += sign * area * cx
            sy += sign * area * cy
            if k == 0:
                fallback.append((cx, cy))
    if total <= 1e-12:
        return sum(c[0] for c in fallback) / len(fallback), sum(c[1] for c in fallback) / len(fallback)
    return sx / total, sy / total


def _label_of(props: Mapping[str, Any]) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, Mapping):
        name = cls.get("name")
        return str(name) if name else None
    if isinstance(cls, str) and cls:
        return cls
    for key in ("class", "label"):
        if props.get(key):
            return str(props[key])
    return None


def _feature_id(feature: Mapping[str, Any], props: Mapping[str, Any], index: int) -> str:
    for value in (props.get("id"), props.get("name"), feature.get("id"), props.get("objectId")):
        if value not in (None, ""):
            return str(value)
    return str(index + 1)


def read_detections_geojson(path: str | Path) -> list[Detection]:
    """Read detections from GeoJSON (QuPath's export: points, polygons, cells with their boundary)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read detections ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection":
        features = doc.get("features", [])
    elif isinstance(doc, Mapping) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, list):
        features = doc
    else:
        raise InputError(f"{path}: expected a GeoJSON FeatureCollection, a Feature or a list of features")
    detections = []
    for index, feature in enumerate(features):
        what = f"{path}, feature {index + 1}"
        if not isinstance(feature, Mapping) or not isinstance(feature.get("geometry"), Mapping):
            raise InputError(f"{what}: not a GeoJSON Feature with a geometry")
        props = feature.get("properties") or {}
        geometry = feature["geometry"]
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        det_id, label = _feature_id(feature, props, index), _label_of(props)
        try:
            if kind == "Point":
                detections.append(
                    Detection(det_id, _number(coords[0], what), _number(coords[1], what), label)
                )
            elif kind == "MultiPoint":
                for k, point in enumerate(coords):
                    x, y = _number(point[0], what), _number(point[1], what)
                    detections.append(Detection(f"{det_id}-{k + 1}", x, y, label))
            elif kind in ("Polygon", "MultiPolygon"):
                x, y = polygon_centroid([coords] if kind == "Polygon" else coords)
                detections.append(Detection(det_id, x, y, label, geometry=geometry))
            else:
                raise InputError(
                    f"{what}: geometry {kind!r} has no cell centre; "
                    "use Point, MultiPoint, Polygon or MultiPolygon"
                )
        except (TypeError, IndexError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{what}: malformed {kind} coordinates ({exc})") from None
    return _check_unique(detections, str(path))


def read_detections(path: str | Path) -> list[Detection]:
    """Read detections from ``.csv``/``.tsv``/``.txt`` or ``.geojson``/``.json`` files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such detections file")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        return read_detections_geojson(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return read_detections_csv(path)
    raise InputError(f"{path}: unknown detections format {suffix!r}; valid: .csv, .tsv, .geojson, .json")


def feature_uuid(detection_id: str) -> str:
    """A stable UUID for a detection id (QuPath reads feature ids as UUIDs)."""
    return str(uuid.uuid5(_UUID_NAMESPACE, detection_id))


def _number_or_none(value: Any) -> float | None:
    return None if value in ("", None) else float(value)


def cells_feature_collection(
    records: Iterable[Mapping[str, Any]],
    geometries: Mapping[str, Mapping[str, Any]],
    colors: Mapping[str, tuple[int, int, int]],
    lineage_names: Sequence[str],
) -> dict[str, Any]:
    """GeoJSON FeatureCollection of scored cells that QuPath (>= 0.4) imports as classified detections.

    ``records`` are rows of ``cells.csv`` (scored cells only); ``geometries`` maps ids to original
    polygons (others become Points). Numeric results go to ``measurements`` (what QuPath shows and
    plots): the probability of the class, every class's probability (``SMR p(<class>)``, from the
    records' ``p_<class>`` columns), position and distance per lineage, the flag for review (0/1);
    the full result, strings included, is under ``properties["smr"]`` (QuPath drops it on export;
    ``smr recount`` matches cells by ``name``, the detection id).
    """
    features = []
    for r in records:
        det_id = str(r["id"])
        measurements: dict[str, float] = {"SMR probability": float(r["probability"])}
        if r.get("margin") not in (None, ""):
            measurements["SMR margin"] = float(r["margin"])
        for name in lineage_names:
            measurements[f"SMR {name} position"] = float(r[f"position_{name}"])
            measurements[f"SMR {name} distance"] = float(r[f"distance_{name}"])
        measurements["SMR borderline"] = 1.0 if r["borderline"] else 0.0
        probabilities = {k[2:]: float(v) for k, v in r.items() if k.startswith("p_") and v not in ("", None)}
        for name, value in probabilities.items():
            measurements[f"SMR p({name})"] = value
        geometry = geometries.get(det_id) or {"type": "Point", "coordinates": [float(r["x"]), float(r["y"])]}
        features.append(
            {
                "type": "Feature",
                "id": feature_uuid(det_id),
                "geometry": dict(geometry),
                "properties": {
                    "objectType": "detection",
                    "name": det_id,
                    "classification": {"name": r["class"], "color": list(colors[r["class"]])},
                    "isLocked": False,
                    "measurements": measurements,
                    "smr": {
                        "id": det_id,
                        "x": float(r["x"]),
                        "y": float(r["y"]),
                        "class": r["class"],
                        "probability": float(r["probability"]),
                        "runner_up": r.get("runner_up") or None,
                        "margin": _number_or_none(r.get("margin")),
                        "lineage": r["lineage"] or None,
                        "position": _number_or_none(r["position"]),
                        "curve_end": r.get("curve_end") or None,
                        "distance": _number_or_none(r["distance"]),
                        "stage_estimate": r["stage_estimate"] or None,
                        "borderline": bool(r["borderline"]),
                        "borderline_reason": r.get("borderline_reason", ""),
                        "probabilities": probabilities,
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
