"""Static INT8 quantisation of the ONNX backbone and what it costs in accuracy and gains in speed.

onnxruntime's static quantisation in QDQ format (QuantizeLinear/DequantizeLinear pairs around the
convolutions; per-channel int8 weights, uint8 activations), with activation ranges calibrated
(min/max) on training images. QDQ is the form onnxruntime and OpenVINO fuse into integer kernels on
the CPU and TensorRT reads on the GPU. Three parts stay in float, each for a measured reason (the
trained 96 px PBC run, mean embedding distance to FP32 on validation images):

- the preprocessing at the graph's input (uint8 -> float, normalisation);
- the stem, the first convolution, which reads the normalised image: OpenVINO 2026.4 computes a
  quantised stem wrongly after the normalisation it fuses into it (distance 0.40 against 0.004 in
  onnxruntime, the served class changed for 9 cells in 10); left in float, OpenVINO and
  onnxruntime agree (0.003);
- the embedding projection (Gemm): quantising it multiplied the embedding error by five (0.005 ->
  0.024) for a layer that is a fraction of a percent of the compute.

:func:`compare_int8` measures the change on the validation split: macro F1 of the served class
(argmax of the SVM probabilities), the Euclidean distance between FP32 and INT8 embeddings, the
change in curve position, and the throughput ratio INT8/FP32 of onnxruntime on this machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from smr.core.contract import IMAGE

from .onnx_backbone import MAX_IR_VERSION, onnx_embed, ort_session

__all__ = ["QUANTIZE_CHOICES", "QuantizationReport", "quantize_int8", "compare_int8", "measure_throughput"]

QUANTIZE_CHOICES = ("int8",)
OPS_TO_QUANTIZE = ["Conv"]


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
            graph = onnx.load(str(prepared), load_external_data=False).graph
            # the nodes are in topological order: the first convolution is the stem (see above)
            stem = next(n.name for n in graph.node if n.op_type == "Conv")
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=OPS_TO_QUANTIZE,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=[stem],
            )
    finally:
        prepared.unlink(missing_ok=True)
    model = onnx.load(str(out_path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save_model(model, str(out_path))
    onnx.checker.check_model(str(out_path))


def measure_throughput(sessions: Sequence, images: np.ndarray, *, repeats: int = 5) -> list[float]:
    """Images per second of each onnxruntime session on one batch (``precision.measure_speed``)."""
    from .precision import measure_speed

    feed = np.ascontiguousarray(images)
    runners = [lambda x, s=session: s.run(None, {IMAGE: x}) for session in sessions]
    return measure_speed(runners, feed, repeats=repeats)


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

    @classmethod
    def from_precision_report(cls, report) -> QuantizationReport:
        """The INT8 check of ``precision.choose_precision`` (a ``PrecisionReport``) in this form."""
        a = report.accuracy
        return cls(
            images=a.images,
            macro_f1_fp32=a.macro_f1_fp32,
            macro_f1_int8=a.macro_f1,
            class_agreement=a.class_agreement,
            embedding_distance_mean=a.embedding_distance_mean,
            embedding_distance_max=a.embedding_distance_max,
            maturity_change_mean=a.maturity_change_mean,
            fp32_images_per_s=report.fp32_images_per_s,
            int8_images_per_s=report.images_per_s,
            timing_batch=report.timing_batch,
        )

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
    from .precision import PrecisionReport, accuracy

    if len(images) == 0:
        raise ValueError("no images to compare FP32 and INT8 on")
    fp32, int8 = ort_session(fp32_path), ort_session(int8_path)
    a = accuracy(
        onnx_embed(fp32, images), onnx_embed(int8, images), labels, svm=svm, lineage_curves=lineage_curves
    )
    batch = images[: max(1, min(timing_batch, len(images)))]
    speed = measure_throughput([fp32, int8], batch)
    return QuantizationReport.from_precision_report(
        PrecisionReport("onnxruntime", "int8", a, True, "", speed[1], speed[0], len(batch))
    )
