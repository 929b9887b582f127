"""What a client learns from the server: classes, lineages with their stages, image size, batch limit,
the physical scale the model was trained at and where it comes from.

The ensemble's ``config.pbtxt`` carries ``parameters`` ``classes`` and ``lineages`` (JSON) and
``image_size`` (docs/architecture.md, "The tensor contract"), and, from ``smr export``, the scale
(``microns_per_pixel``, ``field_of_view_um``), the review margin the server flags cells with
(``review_margin``, with the outputs ``STAGE`` and ``BORDERLINE``) and the provenance parameters,
all named in :mod:`smr.core.contract`; :func:`model_info_from_config` reads them from the JSON form of
``ModelConfig`` that ``tritonclient.grpc`` returns with ``as_json=True``. :func:`provenance` turns
them, with the server's Triton version, into summary.json's ``"provenance"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smr.core.contract import (
    CLASSES_PARAMETER,
    ENSEMBLE,
    FOV_PARAMETER,
    IMAGE,
    IMAGE_SIZE_PARAMETER,
    LINEAGES_PARAMETER,
    MPP_PARAMETER,
    PROVENANCE_PARAMETERS,
    REVIEW_MARGIN_PARAMETER,
    REVIEW_OUTPUTS,
)
from smr.core.targets import stage_boundaries

from .errors import ModelConfigError

__all__ = [
    "LineageInfo",
    "ModelInfo",
    "model_info_from_config",
    "provenance",
    "PROVENANCE_KEYS",
    "RESEARCH_NOTICE",
]

#: Stated in every report, summary.json and on the terminal with a count.
RESEARCH_NOTICE = "For research use, not for diagnosis."
#: The keys of summary.json's "provenance", in order (report.html renders them).
PROVENANCE_KEYS = (
    *PROVENANCE_PARAMETERS,
    "triton_version",
    "model_microns_per_pixel",
    "notice",
)
_NUMERIC_PROVENANCE = {"training_images": int, "val_macro_f1": float}


@dataclass(frozen=True)
class LineageInfo:
    """One lineage as served: stage classes (immature -> mature), their targets and boundaries on t."""

    name: str
    classes: tuple[str, ...]
    targets: tuple[float, ...]
    boundaries: tuple[float, ...]  # len(classes) - 1 midpoints between consecutive targets

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "targets": list(self.targets),
            "boundaries": list(self.boundaries),
        }


@dataclass(frozen=True)
class ModelInfo:
    """The served model as a client needs to know it."""

    name: str
    classes: tuple[str, ...]
    lineages: tuple[LineageInfo, ...]
    image_size: int
    max_batch_size: int
    version: str = ""
    # micrometres per pixel of the network's input as trained (None: the export does not say)
    microns_per_pixel: float | None = None
    field_of_view_um: tuple[float, float] | None = None  # (height, width) of a patch, micrometres
    # the export's provenance parameters (PROVENANCE_PARAMETERS) that it carries, typed
    model_provenance: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)  # other config parameters, verbatim
    # ensemble outputs that are also the input of a later step: Triton prunes ensemble steps by the
    # requested outputs and then stalls ("unexpected deadlock") unless these are requested too
    must_request: tuple[str, ...] = ()
    # the SVM margin of the served STAGE and BORDERLINE outputs (smr.core.review); None when the
    # ensemble does not serve them (exported before they existed): clients then derive them
    review_margin: float | None = None

    @property
    def serves_review(self) -> bool:
        """Whether the ensemble serves ``STAGE`` and ``BORDERLINE`` (with :attr:`review_margin`)."""
        return self.review_margin is not None

    def lineage_of(self, class_name: str) -> int | None:
        """Index of the lineage that ``class_name`` is a stage of, or None for the other classes."""
        for i, lin in enumerate(self.lineages):
            if class_name in lin.classes:
                return i
        return None

    @property
    def lineage_names(self) -> tuple[str, ...]:
        return tuple(lin.name for lin in self.lineages)

    def signature(self) -> dict[str, Any]:
        """Everything that changes what a stored raw output means (used to guard resumable journals)."""
        return {
            "model": self.name,
            "classes": list(self.classes),
            "lineages": [lin.to_dict() for lin in self.lineages],
            "image_size": self.image_size,
        }


def _parameter(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, Mapping):  # JSON form of ModelParameter: {"string_value": "..."}
        value = value.get("string_value", value.get("stringValue"))
    return None if value is None else str(value)


def _json_parameter(params: Mapping[str, Any], key: str, model: str) -> Any:
    text = _parameter(params, key)
    if text is None:
        raise ModelConfigError(
            f"model {model!r} has no {key!r} parameter in its config; is this an SMR ensemble "
            f"exported by `smr export`? (parameters present: {', '.join(sorted(params)) or 'none'})"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"model {model!r}: parameter {key!r} is not valid JSON ({exc})") from None


def _lineage(item: Any, classes: tuple[str, ...], model: str) -> LineageInfo:
    if not isinstance(item, Mapping) or "name" not in item or "classes" not in item:
        raise ModelConfigError(f"model {model!r}: each lineage needs 'name' and 'classes', got {item!r}")
    name = str(item["name"])
    stages = tuple(str(c) for c in item["classes"])
    unknown = [c for c in stages if c not in classes]
    if unknown:
        raise ModelConfigError(f"model {model!r}: lineage {name!r} names classes not in 'classes': {unknown}")
    if len(stages) < 2:
        raise ModelConfigError(f"model {model!r}: lineage {name!r} has fewer than 2 stages")
    targets = item.get("targets")
    if targets is None:
        targets = np.linspace(0.0, 1.0, len(stages))
    targets = tuple(float(t) for t in targets)
    if len(targets) != len(stages):
        raise ModelConfigError(
            f"model {model!r}: lineage {name!r} has {len(stages)} classes but {len(targets)} targets"
        )
    boundaries = item.get("boundaries", item.get("stage_boundaries"))
    if boundaries is None:
        boundaries = stage_boundaries(targets)
    boundaries = tuple(float(b) for b in boundaries)
    increasing = all(b2 > b1 for b1, b2 in zip(boundaries, boundaries[1:], strict=False))
    if len(boundaries) != len(stages) - 1 or not increasing:
        raise ModelConfigError(
            f"model {model!r}: lineage {name!r} needs {len(stages) - 1} increasing stage boundaries, "
            f"got {list(boundaries)}"
        )
    return LineageInfo(name=name, classes=stages, targets=targets, boundaries=boundaries)


def _image_size(config: Mapping[str, Any], params: Mapping[str, Any], model: str) -> int:
    for tensor in config.get("input", []):
        if tensor.get("name") == IMAGE:
            dims = [int(d) for d in tensor.get("dims", [])]
            if len(dims) == 4:  # a config without batching lists the batch dimension itself
                dims = dims[1:]
            if len(dims) == 3 and dims[0] > 0 and dims[0] == dims[1] and dims[2] == 3:
                return dims[0]
    text = _parameter(params, IMAGE_SIZE_PARAMETER)
    if text is not None:
        try:
            return int(json.loads(text))
        except (ValueError, TypeError):
            raise ModelConfigError(
                f"model {model!r}: parameter {IMAGE_SIZE_PARAMETER!r} is not an integer: {text!r}"
            ) from None
    raise ModelConfigError(
        f"model {model!r}: cannot tell the image size (no fixed square {IMAGE} input, no "
        f"{IMAGE_SIZE_PARAMETER!r} parameter)"
    )


def _scale(params: Mapping[str, Any], model: str) -> tuple[float | None, tuple[float, float] | None]:
    text = _parameter(params, MPP_PARAMETER)
    mpp = None
    if text is not None:
        try:
            mpp = float(text)
        except ValueError:
            mpp = math.nan
        if not (math.isfinite(mpp) and mpp > 0):
            raise ModelConfigError(
                f"model {model!r}: parameter {MPP_PARAMETER!r} is not a pixel size in micrometres: {text!r}"
            )
    fov = None
    text = _parameter(params, FOV_PARAMETER)
    if text is not None:
        try:
            h, w = (float(v) for v in json.loads(text))
            fov = (h, w)
        except (ValueError, TypeError):
            raise ModelConfigError(
                f"model {model!r}: parameter {FOV_PARAMETER!r} is not [height, width] in micrometres: "
                f"{text!r}"
            ) from None
    return mpp, fov


def _review_margin(params: Mapping[str, Any], outputs: set[Any], model: str) -> float | None:
    """The margin of the served review outputs; None when the ensemble does not serve them."""
    text = _parameter(params, REVIEW_MARGIN_PARAMETER)
    if text is None or not set(REVIEW_OUTPUTS) <= outputs:
        return None
    try:
        margin = float(text)
    except ValueError:
        margin = math.nan
    if not 0.0 <= margin <= 1.0:
        raise ModelConfigError(
            f"model {model!r}: parameter {REVIEW_MARGIN_PARAMETER!r} is not a probability margin in "
            f"[0, 1]: {text!r}"
        )
    return margin


def _model_provenance(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in PROVENANCE_PARAMETERS:
        text = _parameter(params, key)
        if text is None:
            continue
        kind = _NUMERIC_PROVENANCE.get(key)
        try:
            out[key] = kind(text) if kind else text
        except ValueError:
            out[key] = text  # shown as written rather than dropped
    return out


def provenance(info: ModelInfo, triton_version: str | None) -> dict[str, Any]:
    """summary.json's ``"provenance"``: every key of :data:`PROVENANCE_KEYS`, ``None`` where unknown."""
    doc: dict[str, Any] = {key: info.model_provenance.get(key) for key in PROVENANCE_PARAMETERS}
    doc["triton_version"] = triton_version or None
    doc["model_microns_per_pixel"] = info.microns_per_pixel
    doc["notice"] = RESEARCH_NOTICE
    return doc


def model_info_from_config(config: Mapping[str, Any]) -> ModelInfo:
    """Build :class:`ModelInfo` from a ``ModelConfig`` in JSON form (``get_model_config(as_json=True)``)."""
    if "config" in config and isinstance(config["config"], Mapping):  # the whole ModelConfigResponse
        config = config["config"]
    model = str(config.get("name", ENSEMBLE))
    params = config.get("parameters", {}) or {}
    classes = _json_parameter(params, CLASSES_PARAMETER, model)
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelConfigError(
            f"model {model!r}: parameter {CLASSES_PARAMETER!r} must be a JSON list of names"
        )
    classes_t = tuple(classes)
    lineages = _json_parameter(params, LINEAGES_PARAMETER, model)
    if not isinstance(lineages, list):
        raise ModelConfigError(f"model {model!r}: parameter {LINEAGES_PARAMETER!r} must be a JSON list")
    lineage_infos = tuple(_lineage(item, classes_t, model) for item in lineages)
    max_batch = int(config.get("max_batch_size", config.get("maxBatchSize", 0)) or 0)
    if max_batch < 1:
        raise ModelConfigError(
            f"model {model!r} has max_batch_size {max_batch}; SMR clients send batches [N, H, W, 3] and "
            "need an ensemble with batching (max_batch_size >= 1)"
        )
    outputs = {t.get("name") for t in config.get("output", [])}
    scheduling = config.get("ensemble_scheduling") or {}
    step_inputs = {
        str(v) for step in scheduling.get("step", []) for v in (step.get("input_map") or {}).values()
    }
    known = {
        CLASSES_PARAMETER,
        LINEAGES_PARAMETER,
        IMAGE_SIZE_PARAMETER,
        MPP_PARAMETER,
        FOV_PARAMETER,
        REVIEW_MARGIN_PARAMETER,
        *PROVENANCE_PARAMETERS,
    }
    extra = {k: v for k in params if k not in known and (v := _parameter(params, k)) is not None}
    mpp, fov = _scale(params, model)
    return ModelInfo(
        name=model,
        classes=classes_t,
        lineages=lineage_infos,
        image_size=_image_size(config, params, model),
        max_batch_size=max_batch,
        microns_per_pixel=mpp,
        field_of_view_um=fov,
        model_provenance=_model_provenance(params),
        extra=extra,
        must_request=tuple(sorted(outputs & step_inputs)),
        review_margin=_review_margin(params, outputs, model),
    )
