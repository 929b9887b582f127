"""Static INT8 quantisation of the ONNX backbone and what it costs in accuracy and gains in speed.

onnxruntime's static quantisation in QDQ format (QuantizeLinear/DequantizeLinear pairs around the
convolutions and the embedding projection; per-channel int8 weights, uint8 activations), with
activation ranges calibrated (min/max) on training images. The preprocessing at the graph's input
(uint8 -> float, normalisation) stays in float. QDQ is the form onnxruntime fuses into integer
kernels on the CPU and TensorRT reads on the GPU.

:func:`compare_int8` measures the change on the validation split: macro F1 of the served class
(argmax of the SVM probabilities), the Euclidean distance between FP32 and INT8 embeddings, the
change in curve position, and the throughput ratio INT8/FP32 of onnxruntime on this machine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .onnx_backbone import MAX_IR_VERSION, onnx_embed, ort_session
from .tensors import IMAGE

__all__ = ["QUANTIZE_CHOICES", "QuantizationReport", "quantize_int8", "compare_int8", "measure_throughput"]

QUANTIZE_CHOICES = ("int8",)
OPS_TO_QUANTIZE = ["Conv", "Gemm", "MatMul"]


@contextmanager
def _quiet_root_logger():
    """onnxruntime's quantisation tools log per-tensor chatter on the root logger; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(
    fp32_path: str | Path, out_path: str | Path, calibration_images: np.ndarray, *, batch_size: int = 8
) -> None:
    """Write the INT8 (QDQ) version of ``fp32_path`` to ``out_path``, calibrated on uint8 images."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration_images.ndim != 4 or len(calibration_images) == 0 or calibration_images.dtype != np.uint8:
        raise ValueError(
            f"calibration needs uint8 images (N, H, W, 3) with N > 0, got {calibration_images.dtype} "
            f"{calibration_images.shape}"
        )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                [
                    {IMAGE: calibration_images[i : i + batch_size]}
                    for i in range(0, len(calibration_images), batch_size)
                ]
            )

        def get_next(self):
            return next(self._batches, None)

    out_path = Path(out_path)
    prepared = out_path.with_name(out_path.stem + ".prepared.onnx")
    try:
        with _quiet_root_logger():
            # onnxruntime's graph optimisation first (constant folding, fusions); its symbolic shape
            # inference does not read the exporter's Constant nodes and is not needed here
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=OPS_TO_QUANTIZE,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    finally:
        prepared.unlink(missing_ok=True)
    model = onnx.load(str(out_path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save_model(model, str(out_path))
    onnx.checker.check_model(str(out_path))


def measure_throughput(sessions: Sequence, images: np.ndarray, *, repeats: int = 5) -> list[float]:
    """Images per second of each session on one batch: best of ``repeats`` timed runs after a warm-up.

    The sessions take turns, so that a change in the machine's load hits all of them alike.
    """
    feed = {IMAGE: np.ascontiguousarray(images)}
    for session in sessions:
        session.run(None, feed)
    best = [float("inf")] * len(sessions)
    for _ in range(repeats):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            best[i] = min(best[i], time.perf_counter() - start)
    return [len(images) / seconds for seconds in best]


@dataclass(frozen=True)
class QuantizationReport:
    images: int  # validation images compared
    macro_f1_fp32: float
    macro_f1_int8: float
    class_agreement: float  # fraction of images with the same served class
    embedding_distance_mean: float  # Euclidean, between FP32 and INT8 embeddings (unit vectors)
    embedding_distance_max: float
    maturity_change_mean: float  # mean |t_int8 - t_fp32| over all lineages
    fp32_images_per_s: float
    int8_images_per_s: float
    timing_batch: int

    @property
    def macro_f1_change(self) -> float:
        return self.macro_f1_int8 - self.macro_f1_fp32

    @property
    def speed_ratio(self) -> float:
        return self.int8_images_per_s / self.fp32_images_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "macro_f1_change": self.macro_f1_change, "speed_ratio": self.speed_ratio}

    def summary(self) -> str:
        return (
            f"INT8 vs FP32 on {self.images} validation images: macro F1 {self.macro_f1_fp32:.4f} -> "
            f"{self.macro_f1_int8:.4f} ({self.macro_f1_change:+.4f}), same class for "
            f"{100 * self.class_agreement:.1f}%, embedding distance mean {self.embedding_distance_mean:.4f} "
            f"max {self.embedding_distance_max:.4f}, "
            f"curve position change mean {self.maturity_change_mean:.4f}; "
            f"onnxruntime speed {self.int8_images_per_s:.1f} vs {self.fp32_images_per_s:.1f} img/s "
            f"(ratio {self.speed_ratio:.2f}, batch {self.timing_batch})"
        )


def compare_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    svm,
    lineage_curves: Sequence,
    timing_batch: int = 16,
) -> QuantizationReport:
    """FP32 vs INT8 backbone on labelled images through the served SVM and curves."""
    from sklearn.metrics import f1_score

    from smr.core.curves_json import project_all

    if len(images) == 0:
        raise ValueError("no images to compare FP32 and INT8 on")
    fp32, int8 = ort_session(fp32_path), ort_session(int8_path)
    emb32, emb8 = onnx_embed(fp32, images), onnx_embed(int8, images)
    cls32 = svm.predict_proba(emb32).argmax(axis=1)
    cls8 = svm.predict_proba(emb8).argmax(axis=1)
    present = sorted(set(labels.tolist()))
    f1_32 = f1_score(labels, cls32, labels=present, average="macro", zero_division=0)
    f1_8 = f1_score(labels, cls8, labels=present, average="macro", zero_division=0)
    distance = np.linalg.norm(emb32.astype(np.float64) - emb8, axis=1)
    t32, _ = project_all(lineage_curves, emb32)
    t8, _ = project_all(lineage_curves, emb8)
    batch = images[: max(1, min(timing_batch, len(images)))]
    speed = measure_throughput([fp32, int8], batch)
    return QuantizationReport(
        images=len(images),
        macro_f1_fp32=float(f1_32),
        macro_f1_int8=float(f1_8),
        class_agreement=float(np.mean(cls32 == cls8)),
        embedding_distance_mean=float(distance.mean()),
        embedding_distance_max=float(distance.max()),
        maturity_change_mean=float(np.abs(t8 - t32).mean()) if t32.size else 0.0,
        fp32_images_per_s=speed[0],
        int8_images_per_s=speed[1],
        timing_batch=len(batch),
    )
