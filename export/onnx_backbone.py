"""The served backbone as ONNX: uint8 RGB patches (N, H, W, 3) in, embeddings (N, D) out.

Conversion to float, the ``/255`` scaling, the run's mean/std normalisation and the NHWC -> NCHW
layout change are folded into the graph, so a client sends raw pixels and the graph computes
exactly what training fed to the SVM and the curves (``smr.train.dataset.normalize`` followed by
``SMRNet``). The export uses PyTorch's ``torch.export``-based ONNX exporter with a dynamic batch
dimension, checks the graph with the ONNX checker and compares onnxruntime with PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smr.core.contract import EMBEDDING, IMAGE

__all__ = [
    "DEFAULT_OPSET",
    "PARITY_ATOL",
    "ExportError",
    "ParityReport",
    "ServingBackbone",
    "export_onnx",
    "check_onnx",
    "ort_session",
    "onnx_embed",
    "torch_embed",
    "check_parity",
]

# Opset 21 and IR version 10 are what onnxruntime 1.19 (the NGC Triton 24.10 image, matching the
# embedded Triton 2.51) reads; newer runtimes read them too.
DEFAULT_OPSET = 21
MAX_IR_VERSION = 10
PARITY_ATOL = 1e-4


class ExportError(RuntimeError):
    """The export cannot produce a faithful model (bad graph, parity failure, bad inputs)."""


class ServingBackbone(nn.Module):
    """``SMRNet`` behind the serving input contract: uint8 NHWC RGB -> L2-normalised embeddings."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
        self.net = net
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # the same operations, in the same order, as smr.train.dataset.normalize
        x = image.permute(0, 3, 1, 2).float().div(255.0)
        return self.net((x - self.pixel_mean) / self.pixel_std)


def export_onnx(
    backbone: ServingBackbone, path: str | Path, *, image_size: int, opset: int = DEFAULT_OPSET
) -> None:
    """Write ``backbone`` as ONNX (input ``IMAGE`` uint8 [N, S, S, 3], output ``EMBEDDING``)."""
    import onnx

    backbone = backbone.eval()
    example = torch.zeros((2, image_size, image_size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.onnx.export(
            backbone,
            (example,),
            input_names=[IMAGE],
            output_names=[EMBEDDING],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    except Exception as exc:  # the exporter raises many kinds; name the stage and the cause
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    model = program.model_proto
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "smr export"
    onnx.save_model(model, str(path))
    check_onnx(path, image_size=image_size)


def check_onnx(path: str | Path, *, image_size: int | None = None) -> tuple[int, int]:
    """Run the ONNX checker and check the interface; return (opset, embedding size)."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: the ONNX checker rejects the graph: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if list(inputs) != [IMAGE] or list(outputs) != [EMBEDDING]:
        raise ExportError(
            f"{path}: graph inputs {list(inputs)} / outputs {list(outputs)}, "
            f"expected [{IMAGE}] / [{EMBEDDING}]"
        )
    itype = inputs[IMAGE].type.tensor_type
    otype = outputs[EMBEDDING].type.tensor_type
    if itype.elem_type != onnx.TensorProto.UINT8 or otype.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"{path}: {IMAGE} must be uint8 and {EMBEDDING} float32")
    idims = [d.dim_value if d.HasField("dim_value") else None for d in itype.shape.dim]
    odims = [d.dim_value if d.HasField("dim_value") else None for d in otype.shape.dim]
    if len(idims) != 4 or idims[0] is not None or idims[3] != 3:
        raise ExportError(f"{path}: {IMAGE} shape {idims}, expected [batch, H, W, 3] with a dynamic batch")
    if image_size is not None and idims[1:3] != [image_size, image_size]:
        raise ExportError(f"{path}: {IMAGE} is {idims[1]}x{idims[2]}, expected {image_size}x{image_size}")
    if len(odims) != 2 or odims[0] is not None or not odims[1]:
        raise ExportError(f"{path}: {EMBEDDING} shape {odims}, expected [batch, D]")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return opset, int(odims[1])


def ort_session(path: str | Path, *, threads: int = 0):
    """An onnxruntime CPU session (``threads`` = 0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_embed(session, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Embeddings of uint8 (N, H, W, 3) images from an onnxruntime session, in batches."""
    out = [
        session.run([EMBEDDING], {IMAGE: np.ascontiguousarray(images[i : i + batch_size])})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)


@torch.inference_mode()
def torch_embed(backbone: ServingBackbone, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Embeddings of uint8 (N, H, W, 3) images from the PyTorch model, in batches."""
    backbone = backbone.eval()
    out = [
        backbone(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ParityReport:
    """A runtime (onnxruntime) vs PyTorch on the same images: max abs difference of the embeddings."""

    real_images: int
    random_images: int
    max_abs_diff_real: float
    max_abs_diff_random: float
    atol: float
    runtime: str = "onnxruntime"

    @property
    def max_abs_diff(self) -> float:
        return max(self.max_abs_diff_real, self.max_abs_diff_random)

    def summary(self) -> str:
        real = (
            f"{self.real_images} real images {self.max_abs_diff_real:.2e}"
            if self.real_images
            else "no real images"
        )
        return (
            f"parity {self.runtime} vs PyTorch (max abs diff of the embedding, tolerance {self.atol:.0e}): "
            f"{real}, {self.random_images} random images {self.max_abs_diff_random:.2e}"
        )


def check_parity(
    backbone: ServingBackbone,
    onnx_path: str | Path,
    real_images: np.ndarray | None,
    *,
    image_size: int,
    random_images: int = 8,
    atol: float = PARITY_ATOL,
    seed: int = 0,
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
    name: str = "onnxruntime",
) -> ParityReport:
    """Compare a runtime with PyTorch on real and random images; raise ``ExportError`` beyond ``atol``.

    ``embed``: the runtime's embedding of a batch (default: onnxruntime on ``onnx_path``), ``name``
    its name in the report."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(random_images, image_size, image_size, 3), dtype=np.uint8)
    if embed is None:
        session = ort_session(onnx_path)

        def embed(images: np.ndarray) -> np.ndarray:
            return onnx_embed(session, images)

    def diff(images: np.ndarray) -> float:
        if len(images) == 0:
            return 0.0
        return float(np.max(np.abs(embed(images) - torch_embed(backbone, images))))

    real = np.zeros((0, image_size, image_size, 3), np.uint8) if real_images is None else real_images
    report = ParityReport(len(real), len(noise), diff(real), diff(noise), atol, name)
    if not np.isfinite(report.max_abs_diff) or report.max_abs_diff > atol:
        raise ExportError(
            f"{name} and PyTorch disagree: max abs difference of the embedding "
            f"{report.max_abs_diff:.3e} > tolerance {atol:.0e} ({report.summary()})"
        )
    return report
