"""Run directory -> Triton model repository (``smr export``).

The repository is assembled in a staging folder inside the target, checked (``check.py``) and
only then moved into place, model folder by model folder; a failed export leaves the target as it
was. Layout (docs/architecture.md, "Model repository")::

    REPO/MANIFEST.json
    REPO/smr/config.pbtxt, smr/1/                        ensemble
    REPO/smr_backbone/config.pbtxt, 1/model.onnx
                       [, 1/model.py, 1/smr_triton_io.py, 1/smr_engines.py,
                          1/smr_core/ (smr.core's __init__ and contract) with --runtime python
                          or openvino; model.onnx alone with --runtime openvino-backend]
    REPO/smr_postprocess/config.pbtxt, 1/model.py, 1/curves.json, 1/svm.json,
                          1/smr_core/ (copy of smr.core), 1/smr_manifest.py, 1/smr_triton_io.py

The python models run without the ``smr`` package, so what they import from SMR is copied beside
each ``model.py`` under the name it is imported by (``TRITON_IO_MODULE``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from smr.core import contract as C
from smr.core.contract import DEFAULT_REVIEW_MARGIN

from .manifest import MANIFEST_FILE, build_manifest, sha256_file, write_manifest
from .openvino_backend import inference_precision
from .pbtxt import (
    FOV_PARAMETER,
    MPP_PARAMETER,
    OPENVINO_BACKEND,
    ServingOptions,
    backbone_config,
    ensemble_config,
    postprocess_config,
    review_margin_text,
    to_text,
)

__all__ = [
    "DEFAULT_REPOSITORY",
    "ENSEMBLE_CONFIG",
    "TRITON_IO_MODULE",
    "ExportOptions",
    "ExportResult",
    "export_repository",
    "manifest_digest",
    "model_parameters",
]

# The default model repository of `smr export` and `smr serve` (serving/cli.py imports it): relative
# to the working directory, so both agree wherever they run; from the top of the checkout it is the
# folder docker-compose.yml mounts.
DEFAULT_REPOSITORY = Path("model_repository")
# the ensemble's config, the one file whose manifest entry manifest_digest leaves out
ENSEMBLE_CONFIG = f"{C.ENSEMBLE}/config.pbtxt"
# serving/triton_models/triton_io.py, the tensor I/O of both python models, as they import it
TRITON_IO_MODULE = "smr_triton_io.py"
# serving/triton_models/engines.py, how the python backbone runs the graph, as it imports it
ENGINES_MODULE = "smr_engines.py"
# smr.core, as the python models import it (the whole package beside smr_postprocess; the
# backbone's model.py and smr_engines.py need the tensor names only)
CORE_PACKAGE = "smr_core"
BACKBONE_CORE_MODULES = ("contract.py",)
_TRITON_MODELS = "smr.serving.triton_models"


@dataclass(frozen=True)
class ExportOptions:
    serving: ServingOptions = ServingOptions()
    quantize: str | None = None  # "int8": the same as precision="int8"
    precision: str = "fp32"  # fp32 | bf16 | int8 | auto (precision.PRECISION_CHOICES)
    max_f1_loss: float = 0.01  # the accuracy check of a precision other than FP32 (precision.py)
    min_agreement: float = 0.97
    opset: int = 21
    data_root: Path | None = None  # the data set's root, when split.json's "data" moved
    parity_images: int = 16  # real images for the parity check (plus 8 random ones)
    calibration_images: int = 64  # training images for INT8 calibration
    evaluation_images: int | None = None  # validation images for the INT8 report (None: all)
    force: bool = False  # replace model folders that no SMR manifest accounts for
    # smr.core.review's SVM margin, served by smr_postprocess; None: the run's own (chosen on its
    # validation split by smr train), DEFAULT_REVIEW_MARGIN for a run trained before that
    review_margin: float | None = None


@dataclass
class ExportResult:
    repository: Path
    manifest: dict[str, Any]
    parity: Any  # ParityReport
    quantization: Any | None  # QuantizationReport (when the served precision is INT8)
    seconds: float
    parameters: dict[str, str] = field(default_factory=dict)  # the ensemble's scale and provenance
    precision: str = "fp32"  # the backbone's served precision
    precision_reports: list[Any] = field(default_factory=list)  # precision.PrecisionReport per candidate


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The ``manifest_sha256`` an exported ensemble carries: SHA-256 of MANIFEST.json's document.

    The ensemble's ``config.pbtxt`` holds this digest and MANIFEST.json holds that file's checksum,
    so the digest cannot cover its own file: it is taken over the document without the
    ``smr/config.pbtxt`` entry, as compact JSON with sorted keys. Everything else the manifest
    records (every other file's checksum, the run, the export settings, the versions) is covered,
    and the ensemble config itself is checked against MANIFEST.json when the server starts.
    ``smr export --check`` prints it.
    """
    doc = dict(manifest)
    doc["files"] = {k: v for k, v in dict(doc.get("files", {})).items() if k != ENSEMBLE_CONFIG}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_parameters(run: Any, run_dir: Path) -> dict[str, str]:
    """The ensemble's scale and provenance parameters (pbtxt.MPP_PARAMETER, ...) of a loaded run.

    Unknown values are left out; ``manifest_sha256`` is added by :func:`export_repository`.
    """
    from smr import __version__
    from smr.train.rundir import MODEL_FILE, RunDirError, read_split

    params: dict[str, Any] = {}
    scale = run.meta.get("scale") or {}
    if scale.get("input_microns_per_pixel") is not None:
        params[MPP_PARAMETER] = float(scale["input_microns_per_pixel"])
    if scale.get("field_of_view_um") is not None:
        params[FOV_PARAMETER] = [float(v) for v in scale["field_of_view_um"]]
    params["run_id"] = f"{run_dir.resolve().name}-{sha256_file(run_dir / MODEL_FILE)[:12]}"
    data = run.meta.get("data") or {}
    try:
        split = read_split(run_dir)
    except RunDirError:
        split = {}
    name = data.get("name") or (Path(split["data"]).name if split.get("data") else None)
    if name:
        params["training_data"] = name
    if isinstance(split.get("train"), list):
        params["training_images"] = len(split["train"])
    f1 = (run.result or {}).get("best_val_macro_f1")
    if isinstance(f1, int | float) and math.isfinite(f1):
        params["val_macro_f1"] = round(float(f1), 4)
    params["smr_version"] = __version__
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


def _copy_core(dest: Path, modules: tuple[str, ...] | None = None) -> None:
    """Copy ``smr.core`` (numpy-only modules that import each other relatively) to ``dest``: every
    module, or the package's ``__init__.py`` and ``modules`` (file names) only."""
    core = resources.files("smr.core")
    dest.mkdir(parents=True)
    wanted = None if modules is None else {"__init__.py", *modules}
    for entry in sorted(core.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py") and (wanted is None or entry.name in wanted):
            (dest / entry.name).write_bytes(entry.read_bytes())


def _copy_module(package: str, name: str, dest: Path) -> None:
    dest.write_bytes(resources.files(package).joinpath(name).read_bytes())


def _check_target(repo: Path, force: bool) -> None:
    """Refuse to replace model folders that are not from an earlier SMR export (unless ``force``)."""
    if repo.exists() and not repo.is_dir():
        raise FileExistsError(f"--repository {repo} exists and is not a directory")
    if not repo.exists() or force or (repo / MANIFEST_FILE).is_file():
        return
    foreign = [name for name in C.MODEL_NAMES if (repo / name).exists()]
    if foreign:
        raise FileExistsError(
            f"{repo} already holds {', '.join(foreign)} without an SMR {MANIFEST_FILE}; "
            "choose another --repository or pass --force to replace them"
        )


def _install(staging: Path, repo: Path) -> None:
    """Move the staged models and manifest into ``repo``; put the old ones back on failure."""
    backup = Path(tempfile.mkdtemp(dir=repo, prefix=".smr-previous-"))
    entries = [*C.MODEL_NAMES, MANIFEST_FILE]
    moved_old, moved_new = [], []
    try:
        for name in entries:
            if (repo / name).exists():
                (repo / name).rename(backup / name)
                moved_old.append(name)
        for name in entries:
            (staging / name).rename(repo / name)
            moved_new.append(name)
    except OSError:
        for name in moved_new:
            (repo / name).rename(staging / name)
        for name in moved_old:
            (backup / name).rename(repo / name)
        backup.rmdir()  # empty again; if restoring failed, the old files stay in it
        raise
    shutil.rmtree(backup)


def _versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from smr import __version__

    return {
        "smr": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


@dataclass
class _Job:
    """One export: what was asked, and what the phases have read or made so far."""

    run_dir: Path
    repo: Path
    options: ExportOptions
    serving: ServingOptions  # validated; the chosen precision and its CPU features once known
    log: Callable[[str], None]
    run: Any = None  # smr.train.rundir's loaded run
    svm: Any = None  # smr.core.svm.RbfSvm of the run
    requested: str = "fp32"  # the precision asked for (--quantize int8 is int8)
    candidates: tuple[str, ...] = ()  # the precisions to measure
    cpu: dict[str, Any] = field(default_factory=dict)  # smr.train.recipe.cpu_features()
    real: Any = None  # validation images for the parity check (None: random images only)
    evaluation: Any = None  # validation images and labels for the precision check
    calibration: Any = None  # training images for INT8 calibration
    parity: Any = None  # onnx_backbone.ParityReport
    chosen: str = "fp32"  # the backbone's served precision
    reports: list[Any] = field(default_factory=list)  # precision.PrecisionReport per candidate
    quantization: Any = None  # QuantizationReport when the served precision is INT8
    # openvino-backend: what OpenVINO computes float operations in when not told (bf16 on CPUs with a
    # bf16 path; the backend cannot tell it f32), else "fp32"
    default_precision: str = "fp32"
    review_margin: float = DEFAULT_REVIEW_MARGIN  # the served one (ExportOptions.review_margin resolved)

    @property
    def checked(self) -> bool:
        """Whether the precision check runs: for every precision but an FP32 computed in FP32."""
        return self.requested != "fp32" or self.computed("fp32") != "fp32"

    def computed(self, precision: str) -> str:
        """The precision the served backbone computes ``precision`` in (``precision.computed_precision``)."""
        from .precision import computed_precision

        return computed_precision(self.serving.runtime, precision, self.default_precision)

    @property
    def size(self) -> int:
        return int(self.run.config.image_size)

    @property
    def dim(self) -> int:
        return int(self.run.config.embedding_dim)

    @property
    def flags(self) -> set[str]:
        return set(self.cpu["flags"])


def _load_checked_run(job: _Job) -> None:
    """The run, with at least one lineage and an SVM of its classes and embedding size."""
    from smr.core.svm import RbfSvm
    from smr.train.rundir import SVM_FILE, load_run

    from .onnx_backbone import ExportError

    run = job.run = load_run(job.run_dir)
    classes, dim = run.classes, job.dim
    if not run.curves:
        raise ExportError(f"{job.run_dir}: the run has no lineages; SMR serves at least one maturation curve")
    try:
        svm = job.svm = RbfSvm.from_dict(run.svm)
    except ValueError as exc:
        raise ExportError(f"{job.run_dir / SVM_FILE}: {exc}") from None
    if list(svm.classes) != classes:
        raise ExportError(f"{job.run_dir / SVM_FILE}: classes {list(svm.classes)} != the run's {classes}")
    if svm.n_features != dim:
        raise ExportError(
            f"{job.run_dir / SVM_FILE}: {svm.n_features}-D support vectors, embeddings are {dim}-D"
        )
    job.review_margin = _review_margin(job)


def _review_margin(job: _Job) -> float:
    """The served review margin: the option's, else the run's own, else the default (older runs)."""
    if job.options.review_margin is not None:
        return job.options.review_margin
    chosen = (job.run.result or {}).get("review_margin")
    if chosen is None:
        job.log(f"review margin {DEFAULT_REVIEW_MARGIN:g} (the default: the run did not choose one)")
        return DEFAULT_REVIEW_MARGIN
    job.log(f"review margin {chosen:g} (the run's, chosen on its validation split)")
    return float(chosen)


def _plan_precision(job: _Job) -> None:
    """The requested precision and the candidates to measure on this CPU (``ValueError``: not runnable)."""
    from smr.train.recipe import cpu_features

    from .onnx_backbone import ExportError
    from .openvino_backend import default_inference_precision
    from .precision import candidate_precisions
    from .quantize import QUANTIZE_CHOICES

    options = job.options
    if options.quantize not in (None, *QUANTIZE_CHOICES):
        raise ExportError(
            f"unknown quantisation {options.quantize!r}; choose one of: {', '.join(QUANTIZE_CHOICES)}"
        )
    job.requested = options.precision
    if options.quantize == "int8":
        if job.requested not in ("fp32", "int8"):
            raise ValueError(f"--quantize int8 and --precision {job.requested} disagree; give one of them")
        job.requested = "int8"
    job.cpu = cpu_features()
    if job.serving.runtime == OPENVINO_BACKEND:
        job.default_precision = default_inference_precision()
        if job.requested == "fp32" and job.checked:
            job.log(
                "warning: Triton's openvino backend cannot keep OpenVINO at FP32, which computes in "
                f"{job.default_precision.upper()} on this CPU unless told otherwise: checking that against "
                "FP32 (--runtime onnxruntime serves FP32 as such)"
            )
    job.candidates = tuple(
        candidate_precisions(job.serving.runtime, job.requested, job.flags, default=job.default_precision)
    )


def _read_images(job: _Job) -> None:
    """The parity, evaluation and calibration images, read before the slow steps so that a missing
    data folder fails first (``ImagesUnavailable``; parity alone falls back to random images)."""
    from .run_images import ImagesUnavailable, load_split_images

    def images(split: str, limit: int | None):
        return load_split_images(
            job.run_dir,
            split,
            classes=job.run.classes,
            image_size=job.size,
            limit=limit,
            data_root=job.options.data_root,
        )

    try:
        job.real = images("val", job.options.parity_images).images
    except ImagesUnavailable as exc:
        if job.checked:
            raise
        job.log(f"warning: parity on random images only: {exc}")
        job.real = None
    if job.checked:
        job.evaluation = images("val", job.options.evaluation_images)
    if "int8" in job.candidates:
        job.calibration = images("train", job.options.calibration_images)


def _export_backbone(job: _Job, onnx_path: Path) -> Any:
    """``model.onnx`` at ``onnx_path``, checked against PyTorch (and in the served runtime); returns the
    PyTorch serving backbone."""
    from smr.serving.triton_models.engines import BackboneEngine

    from .onnx_backbone import ServingBackbone, check_parity, export_onnx
    from .pbtxt import runtime_engine

    size, opset = job.size, job.options.opset
    backbone = ServingBackbone(job.run.model, job.run.config.mean, job.run.config.std).eval()
    job.log(f"exporting the backbone to ONNX ({size}x{size} px, opset {opset}) ...")
    export_onnx(backbone, onnx_path, image_size=size, opset=opset)
    job.parity = check_parity(backbone, onnx_path, job.real, image_size=size)
    job.log(job.parity.summary())
    engine = runtime_engine(job.serving.runtime)
    if engine != "onnxruntime":  # FP32 in the served runtime against PyTorch too
        served = BackboneEngine(onnx_path, engine, "fp32")
        job.log(
            check_parity(backbone, onnx_path, job.real, image_size=size, embed=served, name=engine).summary()
        )
    return backbone


def _choose_served_precision(job: _Job, staging: Path, onnx_path: Path) -> None:
    """Measure the candidates against FP32 and leave the chosen graph at ``onnx_path``."""
    from .onnx_backbone import check_onnx
    from .precision import choose_precision, chosen_cpu_features
    from .quantize import QuantizationReport, quantize_int8

    if job.checked:
        graphs = {"fp32": staging / "model.fp32.onnx"}
        onnx_path.rename(graphs["fp32"])
        if "int8" in job.candidates:
            graphs["int8"] = staging / "model.int8.onnx"
            job.log(
                f"quantising to INT8 (QDQ), calibrated on {len(job.calibration.images)} training images ..."
            )
            quantize_int8(graphs["fp32"], graphs["int8"], job.calibration.images)
            check_onnx(graphs["int8"], image_size=job.size)
        job.log(
            f"checking {', '.join(job.candidates)} against FP32 on {len(job.evaluation.images)} validation "
            "images ..."
        )
        job.chosen, job.reports = choose_precision(
            job.serving.runtime, job.requested, {k: str(v) for k, v in graphs.items()}, job.evaluation.images,
            job.evaluation.labels, svm=job.svm, lineage_curves=job.run.curves, flags=job.flags,
            max_f1_loss=job.options.max_f1_loss, min_agreement=job.options.min_agreement,
            default=job.default_precision,
        )  # fmt: skip
        for report in job.reports:
            job.log(report.summary())
        if job.requested == "auto":
            job.log(
                f"auto: {job.serving.runtime} {job.chosen.upper()} is the fastest precision that passes on "
                "this CPU"
            )
        graphs["int8" if job.chosen == "int8" else "fp32"].rename(onnx_path)
        for path in graphs.values():
            path.unlink(missing_ok=True)
        if job.chosen == "int8":
            job.quantization = QuantizationReport.from_precision_report(
                next(r for r in job.reports if r.precision == "int8")
            )
    # the flags of the chosen precision, and of what it is computed in (openvino-backend's BF16)
    features = (
        *chosen_cpu_features(job.chosen, job.flags),
        *chosen_cpu_features(job.computed(job.chosen), job.flags),
    )
    job.serving = dataclasses.replace(
        job.serving, precision=job.chosen, cpu_features=tuple(dict.fromkeys(features))
    ).validate()


def _write_backbone(job: _Job, staging: Path) -> None:
    """``smr_backbone``: the checked graph at its chosen precision, its config, and with the python
    backend its ``model.py`` and what that imports."""
    backbone_dir = staging / C.BACKBONE / "1"
    backbone_dir.mkdir(parents=True)
    onnx_path = backbone_dir / "model.onnx"
    _export_backbone(job, onnx_path)
    _choose_served_precision(job, staging, onnx_path)
    if job.serving.runtime in ("python", "openvino"):
        _copy_module(_TRITON_MODELS, "backbone_python.py", backbone_dir / "model.py")
        _copy_module(_TRITON_MODELS, "triton_io.py", backbone_dir / TRITON_IO_MODULE)
        _copy_module(_TRITON_MODELS, "engines.py", backbone_dir / ENGINES_MODULE)
        _copy_core(backbone_dir / CORE_PACKAGE, BACKBONE_CORE_MODULES)
    (staging / C.BACKBONE / "config.pbtxt").write_text(
        to_text(backbone_config(image_size=job.size, embedding_dim=job.dim, options=job.serving))
    )


def _write_postprocess(job: _Job, staging: Path) -> None:
    """``smr_postprocess``: ``model.py``, what it imports, the run's curves and SVM, its config."""
    from smr.train.rundir import CURVES_FILE, SVM_FILE

    post_dir = staging / C.POSTPROCESS / "1"
    post_dir.mkdir(parents=True)
    _copy_module(_TRITON_MODELS, "postprocess.py", post_dir / "model.py")
    _copy_module(_TRITON_MODELS, "triton_io.py", post_dir / TRITON_IO_MODULE)
    _copy_core(post_dir / CORE_PACKAGE)
    _copy_module("smr.export", "manifest.py", post_dir / "smr_manifest.py")
    shutil.copyfile(job.run_dir / CURVES_FILE, post_dir / "curves.json")
    shutil.copyfile(job.run_dir / SVM_FILE, post_dir / "svm.json")
    config = postprocess_config(
        embedding_dim=job.dim,
        n_classes=len(job.run.classes),
        n_lineages=len(job.run.curves),
        options=job.serving,
        review_margin=job.review_margin,
    )
    (staging / C.POSTPROCESS / "config.pbtxt").write_text(to_text(config))


def _manifest_info(job: _Job) -> dict[str, Any]:
    """MANIFEST.json's record of the run and of the export's settings and measurements."""
    from smr.train.rundir import CONFIG_FILE, CURVES_FILE, MODEL_FILE, SVM_FILE

    run_dir, serving, options, parity = job.run_dir, job.serving, job.options, job.parity
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": {
            "path": str(run_dir.resolve()),
            "config_sha256": sha256_file(run_dir / CONFIG_FILE),
            "model_sha256": sha256_file(run_dir / MODEL_FILE),
            "curves_sha256": sha256_file(run_dir / CURVES_FILE),
            "svm_sha256": sha256_file(run_dir / SVM_FILE),
            "result": job.run.result,
        },
        "export": {
            "runtime": serving.runtime,
            "tensorrt": serving.tensorrt,
            "quantize": "int8" if job.chosen == "int8" else None,
            "precision": {
                "requested": job.requested,
                "chosen": job.chosen,
                # openvino-backend: the precision its float operations run in on the export machine
                # (OpenVINO's default there unless the config says BF16)
                "computed_in": inference_precision(job.chosen, job.default_precision)
                if serving.runtime == OPENVINO_BACKEND
                else None,
                # the flags of the export machine that give the chosen precision its hardware
                # path; the served backbone warns at load on a CPU that lacks one of them
                "cpu_features": list(serving.cpu_features),
                "cpu": {"model": job.cpu["model"], "flags": list(job.cpu["flags"])},
                "max_f1_loss": options.max_f1_loss,
                "min_agreement": options.min_agreement,
                "checks": [r.to_dict() for r in job.reports],
            },
            "image_size": job.size,
            "embedding_dim": job.dim,
            "classes": job.run.classes,
            "max_batch_size": serving.max_batch_size,
            "instance_kind": serving.instance_kind,
            "instances": serving.instances,
            "opset": options.opset,
            "parity": {
                "real_images": parity.real_images,
                "random_images": parity.random_images,
                "max_abs_diff": parity.max_abs_diff,
                "tolerance": parity.atol,
            },
            "quantization": job.quantization.to_dict() if job.quantization else None,
        },
        "versions": _versions(),
    }


def _served_lineages(run: Any) -> list[dict[str, Any]]:
    """The ensemble's ``lineages`` parameter: each lineage's stages, targets and stage boundaries."""
    return [
        {
            "name": lc.name,
            "classes": list(lc.classes),
            "targets": lc.targets.tolist(),
            "boundaries": lc.boundaries.tolist(),
        }
        for lc in run.curves
    ]


def _seal(job: _Job, staging: Path) -> dict[str, str]:
    """The ensemble config (carrying the manifest's digest), MANIFEST.json and the repository check;
    returns the ensemble's scale and provenance parameters."""
    from .check import check_repository
    from .onnx_backbone import ExportError

    (staging / C.ENSEMBLE / "1").mkdir(parents=True)
    info = _manifest_info(job)
    # every file but the ensemble config is in place: its manifest entry is all the digest omits
    digest = manifest_digest(build_manifest(staging, list(C.MODEL_NAMES), **info))
    parameters = {**model_parameters(job.run, job.run_dir), "manifest_sha256": digest}
    config = ensemble_config(
        image_size=job.size,
        embedding_dim=job.dim,
        classes=job.run.classes,
        lineages=_served_lineages(job.run),
        options=job.serving,
        parameters=parameters,
        review_margin=job.review_margin,
    )
    (staging / ENSEMBLE_CONFIG).write_text(to_text(config))
    manifest = build_manifest(staging, list(C.MODEL_NAMES), **info)
    if manifest_digest(manifest) != digest:  # a file changed between the two manifests
        raise ExportError(f"{staging}: files changed while the manifest was written; export again")
    write_manifest(staging, manifest)
    check = check_repository(staging)
    if not check.ok:
        raise ExportError("the exported repository fails its own check:\n  " + "\n  ".join(check.problems))
    return parameters


def export_repository(
    run_dir: str | Path,
    repository: str | Path = DEFAULT_REPOSITORY,
    options: ExportOptions = ExportOptions(),
    *,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export ``run_dir`` into the Triton model repository ``repository``; return what was measured.

    Raises ``RunDirError`` (bad run directory), ``ExportError`` (graph or parity failure, failed
    repository check), ``ImagesUnavailable`` (INT8 without the training images) or
    ``FileExistsError`` (the target holds models that are not SMR's).
    """
    start = time.perf_counter()
    job = _Job(Path(run_dir), Path(repository), options, options.serving.validate(), log)
    if options.review_margin is not None:
        review_margin_text(options.review_margin)  # ValueError before anything slow
    _load_checked_run(job)
    _plan_precision(job)
    _read_images(job)

    repo = job.repo
    _check_target(repo, options.force)
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=repo, prefix=".smr-export-"))
    try:
        _write_backbone(job, staging)
        _write_postprocess(job, staging)
        parameters = _seal(job, staging)
        _install(staging, repo)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(repo, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        repo,
        json.loads((repo / MANIFEST_FILE).read_text()),
        job.parity,
        job.quantization,
        time.perf_counter() - start,
        parameters,
        job.chosen,
        job.reports,
    )
