"""The run directory: everything ``smr train`` leaves behind and ``smr export``/``evaluate`` read.

```
RUN/
  config.json          {"config": TrainConfig, "spec": LineageSpec.to_dict(), "classes": [...],
                        "image_size", "mean", "std", "embedding_dim", "backbone", "smr_version",
                        "data": {"name", "images"}, "scale": {...} (see model_scale),
                        "result": {...}  (added when training finished)}
  model.safetensors    state_dict of the best epoch's SMRNet (no pickle)
  curves.json          smr.core curves document, fitted in the embedding space on the training split
  svm.json             smr.core.svm document (svm_to_dict), trained on the training split
  metrics.csv          one row per epoch
  split.json           {"train": [relative paths], "val": [...], "seed": ..., "fold": ..., "folds": ...}
  checkpoint.pt        optional: last epoch's optimiser state for resuming (never served)
```

Every file is written atomically (temporary file + rename), so an interrupted or failed run never
leaves a half-written artifact over a good one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smr import __version__

from .config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from smr.core.curves_json import LineageCurve
    from smr.core.lineages import LineageSpec

    from .model import SMRNet

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "CURVES_FILE",
    "SVM_FILE",
    "METRICS_FILE",
    "SPLIT_FILE",
    "CHECKPOINT_FILE",
    "BACKBONE",
    "RunDirError",
    "Run",
    "write_json",
    "write_config",
    "model_scale",
    "write_result",
    "read_config",
    "save_model",
    "write_curves",
    "write_svm",
    "write_bytes",
    "write_split",
    "read_split",
    "MetricsWriter",
    "read_metrics",
    "is_complete",
    "load_run_model",
    "load_run",
]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CURVES_FILE = "curves.json"
SVM_FILE = "svm.json"
METRICS_FILE = "metrics.csv"
SPLIT_FILE = "split.json"
CHECKPOINT_FILE = "checkpoint.pt"
BACKBONE = "densenet121"


_UMASK = os.umask(0)
os.umask(_UMASK)


class RunDirError(ValueError):
    """A run directory that is missing a file or whose files disagree with each other."""


# ----------------------------------------------------------------------------------------------
# writing


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    _atomic_write_bytes(Path(path), data)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, doc: Any) -> None:
    """Write ``doc`` as indented JSON, atomically."""
    _atomic_write_bytes(Path(path), (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise RunDirError(
            f"{path.parent}: missing {path.name}; is this a run directory written by smr train?"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from exc


def model_scale(
    microns_per_pixel: float | None, image_px: tuple[float, float] | None, image_size: int
) -> dict[str, Any]:
    """The physical scale a model learns at: ``config.json``'s ``"scale"``.

    Training resizes every image whole to ``image_size`` x ``image_size``, so a model sees the
    data set's field of view (its median image, ``image_px`` = (height, width) pixels at
    ``microns_per_pixel``) at ``field of view / image_size`` micrometres per input pixel. For
    images that are not square the input pixel is the geometric mean of its two sides. Values are
    ``None`` where the data set's scale (``[imaging] microns_per_pixel``) or its images are unknown.
    """
    known = microns_per_pixel is not None and image_px is not None
    fov = [image_px[0] * microns_per_pixel, image_px[1] * microns_per_pixel] if known else None
    return {
        "data_microns_per_pixel": microns_per_pixel,
        "data_image_px": None if image_px is None else [float(image_px[0]), float(image_px[1])],
        "field_of_view_um": fov,
        "input_microns_per_pixel": math.sqrt(fov[0] * fov[1]) / image_size if fov else None,
    }


def write_config(
    run_dir: str | Path, config: TrainConfig, spec: LineageSpec, dataset: Any = None
) -> dict[str, Any]:
    """Write ``config.json`` (hyper-parameters, lineage spec, class order, preprocessing, scale).

    ``dataset``: the ``FolderDataset`` trained on; its name, size and median image size go into
    ``"data"`` and ``"scale"`` (with the spec's ``microns_per_pixel``), unknown without it.
    """
    image_px = dataset.median_image_size() if dataset is not None else None
    doc = {
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        "classes": list(spec.classes),
        "image_size": config.image_size,
        "mean": list(config.mean),
        "std": list(config.std),
        "embedding_dim": config.embedding_dim,
        "backbone": BACKBONE,
        "smr_version": __version__,
        "data": None if dataset is None else {"name": dataset.name, "images": len(dataset)},
        "scale": model_scale(spec.microns_per_pixel, image_px, config.image_size),
    }
    write_json(Path(run_dir) / CONFIG_FILE, doc)
    return doc


def write_result(run_dir: str | Path, result: Mapping[str, Any]) -> None:
    """Add the final ``"result"`` (best epoch, scores) to ``config.json``; marks the run complete."""
    path = Path(run_dir) / CONFIG_FILE
    doc = _read_json(path)
    doc["result"] = dict(result)
    write_json(path, doc)


def read_config(run_dir: str | Path) -> tuple[TrainConfig, LineageSpec, dict[str, Any]]:
    """Read and cross-check ``config.json``; return (config, spec, the whole document)."""
    from smr.core.lineages import LineageSpec

    path = Path(run_dir) / CONFIG_FILE
    doc = _read_json(path)
    for key in ("config", "spec", "classes", "image_size", "mean", "std", "embedding_dim", "backbone"):
        if key not in doc:
            raise RunDirError(f"{path}: missing key {key!r}")
    try:
        config = TrainConfig.from_dict(doc["config"])
    except (ConfigError, TypeError) as exc:
        raise RunDirError(f"{path}: bad 'config': {exc}") from exc
    try:
        spec = LineageSpec.from_dict(doc["spec"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path}: bad 'spec': {exc}") from exc
    if list(doc["classes"]) != list(spec.classes):
        raise RunDirError(f"{path}: 'classes' {doc['classes']} disagree with the spec's {list(spec.classes)}")
    if doc["backbone"] != BACKBONE:
        raise RunDirError(f"{path}: backbone {doc['backbone']!r} is not supported; only {BACKBONE!r}")
    if doc["embedding_dim"] != config.embedding_dim or doc["image_size"] != config.image_size:
        raise RunDirError(f"{path}: 'embedding_dim'/'image_size' disagree with 'config'")
    return config, spec, doc


def save_model(run_dir: str | Path, model: nn.Module) -> None:
    """Write the model's state dict as ``model.safetensors`` (unwrapping DDP)."""
    from safetensors.torch import save

    module = getattr(model, "module", model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    data = save(state, metadata={"format": "pt", "backbone": BACKBONE, "smr_version": __version__})
    _atomic_write_bytes(Path(run_dir) / MODEL_FILE, data)


def write_curves(
    run_dir: str | Path, lineage_curves: Sequence[LineageCurve], meta: Mapping[str, Any] | None = None
) -> None:
    """Write ``curves.json`` (curves fitted in the embedding space)."""
    from smr.core.curves_json import curves_to_json

    write_json(
        Path(run_dir) / CURVES_FILE,
        curves_to_json(list(lineage_curves), space="embedding", meta=dict(meta or {})),
    )


def write_svm(run_dir: str | Path, svm_doc: Mapping[str, Any]) -> None:
    write_json(Path(run_dir) / SVM_FILE, dict(svm_doc))


def write_split(
    run_dir: str | Path,
    train: Iterable[str],
    val: Iterable[str],
    *,
    seed: int,
    fold: int | None,
    folds: int | None,
    data: str | None = None,
) -> None:
    """Write ``split.json``: relative paths of the training and validation images."""
    doc = {"train": list(train), "val": list(val), "seed": seed, "fold": fold, "folds": folds, "data": data}
    write_json(Path(run_dir) / SPLIT_FILE, doc)


def read_split(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SPLIT_FILE
    doc = _read_json(path)
    for key in ("train", "val"):
        if not isinstance(doc.get(key), list):
            raise RunDirError(f"{path}: missing list {key!r}")
    return doc


class MetricsWriter:
    """Append one row per epoch to ``metrics.csv``; the header is fixed by the first row."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.fieldnames: list[str] | None = None
        self.rows: list[dict[str, Any]] = []

    def restore(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Start from the rows of an interrupted run (``smr train --resume``) and rewrite the file."""
        self.fieldnames, self.rows = None, []
        for row in rows:
            self.append(row)

    def append(self, row: Mapping[str, Any]) -> None:
        if self.fieldnames is None:
            self.fieldnames = list(row)
        missing = [k for k in row if k not in self.fieldnames]
        if missing:
            self.fieldnames += missing
        self.rows.append(dict(row))
        # rewrite the whole (small) file so that a new column never corrupts it
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fieldnames, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        _atomic_write_bytes(self.path, buf.getvalue().encode())


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: missing {METRICS_FILE}")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------------
# reading


def is_complete(run_dir: str | Path) -> bool:
    """True when training finished: every artifact is present and config.json holds a result."""
    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in (MODEL_FILE, CURVES_FILE, SVM_FILE, METRICS_FILE)):
        return False
    try:
        return "result" in json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _load_state(run_dir: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir}: missing {MODEL_FILE}; is this a run directory written by smr train?")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RunDirError(f"{path}: unreadable safetensors file ({exc})") from exc


def load_run_model(run_dir: str | Path) -> SMRNet:
    """Rebuild the trained ``SMRNet`` from a run directory alone (eval mode, on the CPU)."""
    from .model import SMRNet

    run_dir = Path(run_dir)
    config, _, _ = read_config(run_dir)
    state = _load_state(run_dir)
    model = SMRNet(embedding_dim=config.embedding_dim, dropout=config.dropout)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RunDirError(
            f"{run_dir / MODEL_FILE}: does not match the network in {CONFIG_FILE}: {exc}"
        ) from exc
    return model.eval()


@dataclass
class Run:
    """A trained run, read back from its directory."""

    path: Path
    config: TrainConfig
    spec: LineageSpec
    model: SMRNet
    curves: list[LineageCurve]
    svm: dict[str, Any]
    meta: dict[str, Any] = field(repr=False)  # the whole config.json
    curves_doc: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def result(self) -> dict[str, Any] | None:
        return self.meta.get("result")


def _check_curves(path: Path, lineage_curves: Sequence[LineageCurve], spec: LineageSpec, dim: int) -> None:
    names = [lc.name for lc in lineage_curves]
    expected = [lin.name for lin in spec.lineages]
    if names != expected:
        raise RunDirError(f"{path}: lineages {names} disagree with the spec's {expected}")
    for lc, lin in zip(lineage_curves, spec.lineages, strict=True):
        if list(lc.classes) != list(lin.classes):
            raise RunDirError(
                f"{path}: lineage {lc.name!r} classes {list(lc.classes)} != spec {list(lin.classes)}"
            )
        d = lc.curve.control_points.shape[1]
        if d != dim:
            raise RunDirError(f"{path}: lineage {lc.name!r} curve lives in {d}-D, embeddings are {dim}-D")


def load_run(run_dir: str | Path, *, model: bool = True) -> Run:
    """Read a complete run directory and check that its files agree with each other.

    Args:
        model: build the network too (``False`` leaves ``Run.model`` as ``None``).
    """
    from smr.core.curves_json import curves_from_json

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory not found: {run_dir}")
    config, spec, meta = read_config(run_dir)
    curves_path = run_dir / CURVES_FILE
    curves_doc = _read_json(curves_path)
    try:
        lineage_curves = curves_from_json(curves_doc)
    except ValueError as exc:
        raise RunDirError(f"{curves_path}: {exc}") from exc
    if curves_doc.get("space", "embedding") != "embedding":
        raise RunDirError(f"{curves_path}: curves live in {curves_doc.get('space')!r}, expected 'embedding'")
    _check_curves(curves_path, lineage_curves, spec, config.embedding_dim)
    svm_path = run_dir / SVM_FILE
    svm_doc = _read_json(svm_path)
    svm_classes = svm_doc.get("classes")
    if svm_classes is not None and list(svm_classes) != list(spec.classes):
        raise RunDirError(
            f"{svm_path}: classes {svm_classes} disagree with {CONFIG_FILE}'s {list(spec.classes)}"
        )
    net = load_run_model(run_dir) if model else None
    return Run(
        path=run_dir,
        config=config,
        spec=spec,
        model=net,  # type: ignore[arg-type]
        curves=lineage_curves,
        svm=svm_doc,
        meta=meta,
        curves_doc=curves_doc,
    )
