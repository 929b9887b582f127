"""The backbone's precision: each one checked against FP32 on the run's validation images, and timed.

``smr export --precision fp32|bf16|int8|auto`` runs every candidate precision of the chosen runtime
with the engine the server will run (``smr.serving.triton_models.engines.BackboneEngine``), on the
run's validation images, and compares it with the FP32 reference (onnxruntime on the FP32 graph)
through the served SVM: the macro F1 of the served class (argmax of the probabilities) and the
share of images given the same class. A precision passes when it loses at most ``max_f1_loss``
of macro F1 (1 percentage point by default) and keeps the class of at least ``min_agreement``
of the images (97 % by default); FP32 in another runtime must also stay within the export's
parity tolerance of the reference. An explicit precision that fails is refused with the figures;
``auto`` takes the fastest precision that passes, timed on this machine, the candidates taking
turns so that a change in the machine's load hits them alike. BF16 is a candidate of ``auto`` only
where the CPU has a BF16 matrix path (``avx512_bf16`` or ``amx_bf16``).

Triton's openvino backend (``--runtime openvino-backend``) cannot be told to compute in f32, and
OpenVINO computes in bf16 by default where the CPU has a bf16 path: there its FP32 is a BF16 (and
its INT8's float parts are bf16). Each precision is checked as the backend will compute it
(``openvino_backend.engine_precision``): such an FP32 is held to the accuracy bounds, not to the
parity tolerance, its report says "computed in BF16", it is checked even when asked for
explicitly, and ``auto`` measures BF16 in its place.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from smr.serving.triton_models.engines import PRECISION_CPU_FLAGS, PRECISIONS, BackboneEngine

from . import openvino_backend as OV
from .onnx_backbone import PARITY_ATOL, ExportError
from .pbtxt import BF16_RUNTIMES, OPENVINO_BACKEND, runtime_engine, runtime_precisions

__all__ = [
    "MAX_F1_LOSS",
    "MIN_AGREEMENT",
    "PRECISION_CHOICES",
    "PrecisionRefused",
    "PrecisionReport",
    "Accuracy",
    "accuracy",
    "candidate_precisions",
    "computed_precision",
    "chosen_cpu_features",
    "measure_speed",
    "choose_precision",
]

log = logging.getLogger(__name__)

MAX_F1_LOSS = 0.01  # macro F1, FP32 minus the precision's
MIN_AGREEMENT = 0.97  # share of validation images with the same served class as FP32
PRECISION_CHOICES = (*PRECISIONS, "auto")


class PrecisionRefused(ExportError):
    """The requested precision fails the accuracy check (or no precision passes)."""


@dataclass(frozen=True)
class Accuracy:
    """One precision against the FP32 reference on labelled images, through the served SVM."""

    images: int
    macro_f1_fp32: float
    macro_f1: float
    class_agreement: float
    embedding_distance_mean: float  # Euclidean, between the precision's and FP32's embeddings
    embedding_distance_max: float
    max_abs_diff: float  # largest difference of one embedding component
    maturity_change_mean: float  # mean |t - t_fp32| over every lineage

    @property
    def macro_f1_change(self) -> float:
        return self.macro_f1 - self.macro_f1_fp32


def accuracy(
    reference: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, *, svm, lineage_curves: Sequence = ()
) -> Accuracy:
    """Compare ``embeddings`` with the FP32 ``reference`` embeddings of the same labelled images."""
    from sklearn.metrics import f1_score

    from smr.core.curves_json import project_all

    if len(reference) == 0 or reference.shape != embeddings.shape:
        raise ValueError(f"cannot compare embeddings of shapes {reference.shape} and {embeddings.shape}")
    ref, emb = reference.astype(np.float64), embeddings.astype(np.float64)
    cls_ref = svm.predict_proba(ref).argmax(axis=1)
    cls = svm.predict_proba(emb).argmax(axis=1)
    present = sorted(set(labels.tolist()))
    f1_ref = f1_score(labels, cls_ref, labels=present, average="macro", zero_division=0)
    f1 = f1_score(labels, cls, labels=present, average="macro", zero_division=0)
    distance = np.linalg.norm(ref - emb, axis=1)
    t_ref, _ = project_all(lineage_curves, ref) if lineage_curves else (np.zeros((0,)), None)
    t, _ = project_all(lineage_curves, emb) if lineage_curves else (np.zeros((0,)), None)
    return Accuracy(
        images=len(reference),
        macro_f1_fp32=float(f1_ref),
        macro_f1=float(f1),
        class_agreement=float(np.mean(cls_ref == cls)),
        embedding_distance_mean=float(distance.mean()),
        embedding_distance_max=float(distance.max()),
        max_abs_diff=float(np.max(np.abs(ref - emb))),
        maturity_change_mean=float(np.abs(t - t_ref).mean()) if t_ref.size else 0.0,
    )


@dataclass(frozen=True)
class PrecisionReport:
    runtime: str
    precision: str
    accuracy: Accuracy
    passed: bool
    problem: str  # why it failed ("" when it passed)
    images_per_s: float = math.nan  # this precision, in this process, on timing_batch images
    fp32_images_per_s: float = math.nan  # onnxruntime FP32 (the reference) on the same batch
    timing_batch: int = 0
    computed_in: str = ""  # openvino-backend: the float operations' precision ("bf16", "fp32")

    @property
    def speed_ratio(self) -> float:
        return self.images_per_s / self.fp32_images_per_s

    def to_dict(self) -> dict:
        a = self.accuracy
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "passed": self.passed,
            "problem": self.problem,
            **asdict(a),
            "macro_f1_change": a.macro_f1_change,
            "images_per_s": self.images_per_s,
            "fp32_images_per_s": self.fp32_images_per_s,
            "speed_ratio": self.speed_ratio,
            "timing_batch": self.timing_batch,
            "computed_in": self.computed_in or None,
        }

    def summary(self) -> str:
        a = self.accuracy
        speed = (
            ""
            if math.isnan(self.images_per_s)
            else f"; {self.images_per_s:.1f} img/s vs onnxruntime FP32 {self.fp32_images_per_s:.1f} "
            f"(ratio {self.speed_ratio:.2f}, batch {self.timing_batch})"
        )
        verdict = "passes" if self.passed else f"FAILS ({self.problem})"
        computed = OV.computed_note(self.precision, self.computed_in)
        return (
            f"{self.runtime} {self.precision.upper()}{computed} vs FP32 on {a.images} validation images: "
            f"macro F1 {a.macro_f1_fp32:.4f} -> {a.macro_f1:.4f} ({100 * a.macro_f1_change:+.2f} pp), "
            f"same class for {100 * a.class_agreement:.1f}%, embedding distance mean "
            f"{a.embedding_distance_mean:.4f} max {a.embedding_distance_max:.4f}{speed}: {verdict}"
        )


def _problem(
    computed: str, a: Accuracy, *, max_f1_loss: float, min_agreement: float, parity_atol: float
) -> str:
    """Why a precision computed in ``computed`` (``computed_precision``) fails, or ""."""
    problems = []
    if not math.isfinite(a.max_abs_diff):
        problems.append("non-finite embeddings")
    if computed == "fp32" and a.max_abs_diff > parity_atol:
        problems.append(f"FP32 differs from the reference by {a.max_abs_diff:.2e} > {parity_atol:.0e}")
    if -a.macro_f1_change > max_f1_loss:
        problems.append(f"macro F1 loss {-100 * a.macro_f1_change:.2f} pp > {100 * max_f1_loss:.2f} pp")
    if a.class_agreement < min_agreement:
        problems.append(f"same class {100 * a.class_agreement:.1f}% < {100 * min_agreement:.1f}%")
    return "; ".join(problems)


def computed_precision(runtime: str, precision: str, default: str = "fp32") -> str:
    """The engine precision that computes what the served ``runtime`` computes for ``precision``;
    ``default``: OpenVINO's own inference precision on this CPU (``openvino-backend`` only)."""
    return OV.engine_precision(precision, default) if runtime == OPENVINO_BACKEND else precision


def candidate_precisions(
    runtime: str, requested: str, flags: set[str], *, default: str = "fp32"
) -> list[str]:
    """The precisions to check: the requested one, or for ``auto`` every one the runtime runs
    (BF16 only where ``flags`` hold a BF16 matrix path; for ``openvino-backend`` where OpenVINO's
    ``default`` is bf16, BF16 instead of an FP32 that would be computed in BF16 all the same)."""
    if requested not in PRECISION_CHOICES:
        raise ValueError(
            f"precision {requested!r} is not valid; choose one of: {', '.join(PRECISION_CHOICES)}"
        )
    available = runtime_precisions(runtime)
    if requested != "auto":
        if requested not in available:
            raise ValueError(
                f"--runtime {runtime} cannot run precision {requested}; it runs {', '.join(available)} "
                f"(bf16 needs {BF16_RUNTIMES})"
            )
        return [requested]
    if computed_precision(runtime, "fp32", default) == "bf16":
        return ["bf16", *(p for p in available if p not in ("fp32", "bf16"))]
    return [p for p in available if p != "bf16" or flags & set(PRECISION_CPU_FLAGS["bf16"])]


def chosen_cpu_features(precision: str, flags: set[str]) -> tuple[str, ...]:
    """The flags of this CPU that give ``precision`` its hardware path (recorded in the manifest)."""
    return tuple(f for f in PRECISION_CPU_FLAGS[precision] if f in flags)


def measure_speed(
    runners: Sequence[Callable[[np.ndarray], object]], images: np.ndarray, *, repeats: int = 5
) -> list[float]:
    """Images per second of each runner on one batch: best of ``repeats`` after a warm-up, in turns."""
    for run in runners:
        run(images)
    best = [math.inf] * len(runners)
    for _ in range(repeats):
        for i, run in enumerate(runners):
            start = time.perf_counter()
            run(images)
            best[i] = min(best[i], time.perf_counter() - start)
    return [len(images) / seconds for seconds in best]


def choose_precision(
    runtime: str,
    requested: str,
    graphs: dict[str, str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    svm,
    lineage_curves: Sequence = (),
    flags: set[str],
    max_f1_loss: float = MAX_F1_LOSS,
    min_agreement: float = MIN_AGREEMENT,
    parity_atol: float = PARITY_ATOL,
    timing_batch: int = 16,
    threads: int = 0,
    default: str = "fp32",
) -> tuple[str, list[PrecisionReport]]:
    """(the precision to serve, a report per candidate). ``graphs``: ONNX path per precision
    (``fp32`` always; ``int8`` when it is a candidate; ``bf16`` runs the FP32 graph). ``default``:
    OpenVINO's own inference precision on this CPU, for ``openvino-backend``
    (``openvino_backend.default_inference_precision``).

    Raises ``PrecisionRefused`` with the figures when the requested precision fails its check."""
    candidates = candidate_precisions(runtime, requested, flags, default=default)
    if len(images) == 0:
        raise ExportError("no validation images to check the precision on")
    engine = runtime_engine(runtime)
    reference = BackboneEngine(graphs["fp32"], "onnxruntime", "fp32", threads=threads)
    ref_emb = reference.embed(images)
    engines, results = {}, {}
    for precision in candidates:
        graph = graphs["int8" if precision == "int8" else "fp32"]
        computed = computed_precision(runtime, precision, default)
        engines[precision] = BackboneEngine(graph, engine, computed, threads=threads)
        a = accuracy(
            ref_emb, engines[precision].embed(images), labels, svm=svm, lineage_curves=lineage_curves
        )
        results[precision] = (a, _problem(computed, a, max_f1_loss=max_f1_loss,
                                          min_agreement=min_agreement, parity_atol=parity_atol))  # fmt: skip
    batch = images[: max(1, min(timing_batch, len(images)))]
    speeds = measure_speed([reference, *engines.values()], batch)
    served = runtime == OPENVINO_BACKEND  # reports say what Triton's openvino backend computes in
    reports = [
        PrecisionReport(
            runtime,
            p,
            a,
            not problem,
            problem,
            speed,
            speeds[0],
            len(batch),
            OV.inference_precision(p, default) if served else "",
        )  # fmt: skip
        for (p, (a, problem)), speed in zip(results.items(), speeds[1:], strict=True)
    ]
    passing = [r for r in reports if r.passed]
    if requested != "auto":
        (report,) = reports
        if not report.passed:
            raise PrecisionRefused(
                f"--precision {requested} fails the accuracy check: {report.summary()}; "
                f"choose another --precision ({', '.join(PRECISION_CHOICES)}) or --runtime"
            )
        return requested, reports
    if not passing:
        raise PrecisionRefused(
            "no precision passes the accuracy check: "
            + " | ".join(r.summary() for r in reports)
            + "; check the run's validation images"
        )
    best = max(passing, key=lambda r: r.images_per_s)
    return best.precision, reports
