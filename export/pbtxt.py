"""Triton ``config.pbtxt`` files, built as ``ModelConfig`` protobufs (tritonclient's schema).

Building the configs as protobuf messages, rather than as text templates, means a field name or
enum value that Triton would not accept fails here, at export time; ``parse_config`` reads a file
back with the same schema for ``smr export --check``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from smr.core import contract as C
from smr.core.contract import (
    CLASSES_PARAMETER,
    DEFAULT_REVIEW_MARGIN,
    EMBEDDING_DIM_PARAMETER,
    FOV_PARAMETER,
    IMAGE_SIZE_PARAMETER,
    LINEAGES_PARAMETER,
    MPP_PARAMETER,
    PROVENANCE_PARAMETERS,
    REVIEW_MARGIN_PARAMETER,
)
from smr.serving.triton_models.engines import ENGINE_PRECISIONS, PRECISIONS

from . import openvino_backend as OV
from . import tensors as T
from .openvino_backend import RUNTIME as OPENVINO_BACKEND
from .tensors import TensorSpec

__all__ = [
    "RUNTIMES",
    "OPENVINO_BACKEND",
    "INSTANCE_KINDS",
    "TENSORRT_PRECISIONS",
    "PRECISIONS",
    "runtime_engine",
    "runtime_precisions",
    "BF16_RUNTIMES",
    "ServingOptions",
    "backbone_config",
    "postprocess_config",
    "ensemble_config",
    "to_text",
    "parse_config",
    "ConfigFormatError",
    "review_margin_text",
    # the ensemble parameters that describe the model, defined in smr.core.contract
    "MPP_PARAMETER",
    "FOV_PARAMETER",
    "PROVENANCE_PARAMETERS",
]

# onnxruntime: Triton's onnxruntime backend; python: the python backend running onnxruntime;
# openvino: the python backend running OpenVINO (serving/triton_models/engines.py);
# openvino-backend: Triton's openvino backend (openvino_backend.py; not in the embedded server)
RUNTIMES = ("onnxruntime", "python", "openvino", OPENVINO_BACKEND)
INSTANCE_KINDS = ("cpu", "gpu")
TENSORRT_PRECISIONS = ("fp16", "fp32")
# the runtimes that run BF16, as the messages that refuse BF16 elsewhere name them
BF16_RUNTIMES = f"--runtime openvino or {OPENVINO_BACKEND}"


def runtime_engine(runtime: str) -> str:
    """The engine (``engines.ENGINES``) that runs the backbone of ``runtime`` in this process (for
    Triton's openvino backend: the engine the export checks it with)."""
    return "openvino" if runtime in ("openvino", OPENVINO_BACKEND) else "onnxruntime"


def runtime_precisions(runtime: str) -> tuple[str, ...]:
    """The precisions the backbone of ``runtime`` can run."""
    return ENGINE_PRECISIONS[runtime_engine(runtime)]


class ConfigFormatError(ValueError):
    """A ``config.pbtxt`` that is not a valid Triton ``ModelConfig``."""


@dataclass(frozen=True)
class ServingOptions:
    """How the composing models are scheduled (``smr export`` flags)."""

    runtime: str = "onnxruntime"  # smr_backbone: Triton's onnxruntime or openvino backend, or python
    precision: str = "fp32"  # of the backbone: fp32, bf16 (openvino, openvino-backend), int8 (QDQ graph)
    cpu_features: tuple[str, ...] = ()  # the CPU flags the precision was chosen for
    tensorrt: str | None = None  # "fp16" | "fp32": TensorRT accelerator (onnxruntime runtime only)
    max_batch_size: int = 64
    instance_kind: str = "cpu"  # of smr_backbone; smr_postprocess (numpy) always runs on the CPU
    instances: int = 1  # instances of each composing model
    max_queue_delay_us: int = 500  # dynamic batching: how long a request may wait for others
    warmup_batch_sizes: tuple[int, ...] = (1,)
    intra_op_threads: int = 0  # onnxruntime/OpenVINO threads per backbone instance; 0: their default
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> ServingOptions:
        def fail(message: str) -> None:
            raise ValueError(message)

        if self.runtime not in RUNTIMES:
            fail(f"runtime {self.runtime!r} is not valid; choose one of: {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            fail(f"precision {self.precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
        if self.precision not in runtime_precisions(self.runtime):
            fail(
                f"--runtime {self.runtime} cannot run precision {self.precision}; it runs "
                f"{', '.join(runtime_precisions(self.runtime))} (bf16 needs {BF16_RUNTIMES})"
            )
        if self.instance_kind not in INSTANCE_KINDS:
            fail(
                f"instance kind {self.instance_kind!r} is not valid; "
                f"choose one of: {', '.join(INSTANCE_KINDS)}"
            )
        if self.tensorrt is not None:
            if self.tensorrt not in TENSORRT_PRECISIONS:
                fail(
                    f"TensorRT precision {self.tensorrt!r} is not valid; choose one of: "
                    f"{', '.join(TENSORRT_PRECISIONS)}"
                )
            if self.runtime not in ("onnxruntime", "python"):
                fail(
                    "--tensorrt needs --runtime onnxruntime (Triton's onnxruntime backend) or python "
                    "(onnxruntime's TensorRT provider in the python backend)"
                )
            if self.instance_kind != "gpu":
                fail("--tensorrt needs GPU instances (--instance-kind gpu)")
        if not 1 <= self.max_batch_size <= 4096:
            fail(f"max batch size {self.max_batch_size} must lie in [1, 4096]")
        if self.instances < 1:
            fail(f"instances {self.instances} must be >= 1")
        if self.max_queue_delay_us < 0:
            fail(f"max queue delay {self.max_queue_delay_us} us must be >= 0")
        if not self.warmup_batch_sizes or any(
            not 1 <= b <= self.max_batch_size for b in self.warmup_batch_sizes
        ):
            fail(
                f"warm-up batch sizes {list(self.warmup_batch_sizes)} must lie in [1, max batch size "
                f"{self.max_batch_size}]"
            )
        if self.runtime in ("openvino", OPENVINO_BACKEND) and self.instance_kind != "cpu":
            fail(f"--runtime {self.runtime} runs on CPU instances (--instance-kind cpu)")
        if self.intra_op_threads < 0:
            fail(f"intra-op threads {self.intra_op_threads} must be >= 0")
        return self


def _add_tensors(container, specs: Sequence[TensorSpec]) -> None:
    for spec in specs:
        container.add(name=spec.name, data_type=mc.DataType.Value(spec.data_type), dims=list(spec.dims))


def _add_scheduling(config: mc.ModelConfig, options: ServingOptions, kind: str) -> None:
    kind_enum = mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind_enum, count=options.instances)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us


def _add_warmup(
    config: mc.ModelConfig,
    inputs: Sequence[TensorSpec],
    batch_sizes: Sequence[int],
    *,
    zeros: bool = False,
    unbatched: bool = False,
) -> None:
    """One warm-up sample per batch size; ``unbatched``: for a model without Triton batching, whose
    inputs' first dimension is the batch (a sample of batch_size 1 with that dimension set)."""
    kind = "zero" if zeros else "random"
    for batch_size in batch_sizes:
        warmup = config.model_warmup.add(
            name=f"{kind}_batch_{batch_size}", batch_size=1 if unbatched else batch_size
        )
        for spec in inputs:
            tensor = warmup.inputs[spec.name]
            tensor.data_type = mc.DataType.Value(spec.data_type)
            tensor.dims.extend((batch_size, *spec.dims[1:]) if unbatched else spec.dims)
            if zeros:
                tensor.zero_data = True
            else:
                tensor.random_data = True


def _python_backbone(config: mc.ModelConfig, options: ServingOptions) -> None:
    """The python backend's ``model.py`` (serving/triton_models/backbone_python.py) and its parameters."""
    config.backend = "python"
    config.parameters["onnx_file"].string_value = "model.onnx"
    config.parameters["engine"].string_value = runtime_engine(options.runtime)
    config.parameters["precision"].string_value = options.precision
    config.parameters["cpu_features"].string_value = ",".join(options.cpu_features)
    config.parameters["intra_op_threads"].string_value = str(options.intra_op_threads)
    providers = ["CPUExecutionProvider"]
    if options.instance_kind == "gpu":
        providers.insert(0, "CUDAExecutionProvider")
    if options.tensorrt:
        providers.insert(0, "TensorrtExecutionProvider")
        config.parameters["tensorrt_precision"].string_value = options.tensorrt
    config.parameters["execution_providers"].string_value = ",".join(providers)


def _openvino_backbone(
    config: mc.ModelConfig, options: ServingOptions, *, image_size: int, embedding_dim: int
) -> None:
    """Triton's openvino backend (openvino_backend.py): ``model.onnx`` at each request's own batch size
    (no Triton batching, dims [-1, ...]), one stream per instance, the precision's parameters."""
    config.backend = OV.BACKEND
    config.default_model_filename = OV.MODEL_FILE
    config.max_batch_size = 0
    parameters = OV.backend_parameters(
        options.precision, instances=options.instances, threads=options.intra_op_threads
    )
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    inputs = T.unbatched(T.backbone_inputs(image_size))
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, T.unbatched(T.backbone_outputs(embedding_dim)))
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=options.instances)
    _add_warmup(config, inputs, options.warmup_batch_sizes, unbatched=True)


def backbone_config(*, image_size: int, embedding_dim: int, options: ServingOptions) -> mc.ModelConfig:
    """``smr_backbone``: the ONNX graph, on Triton's onnxruntime or openvino backend or the python backend."""
    options.validate()
    config = mc.ModelConfig(name=C.BACKBONE, max_batch_size=options.max_batch_size)
    if options.runtime == OPENVINO_BACKEND:
        _openvino_backbone(config, options, image_size=image_size, embedding_dim=embedding_dim)
        return config
    if options.runtime == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
        if options.intra_op_threads:
            config.parameters["intra_op_thread_count"].string_value = str(options.intra_op_threads)
    else:
        _python_backbone(config, options)
    inputs = T.backbone_inputs(image_size)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, T.backbone_outputs(embedding_dim))
    _add_scheduling(config, options, options.instance_kind)
    if options.tensorrt and options.runtime == "onnxruntime":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = options.tensorrt.upper()
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
    _add_warmup(config, inputs, options.warmup_batch_sizes)
    return config


def review_margin_text(margin: float) -> str:
    """The ``review_margin`` parameter's string (``ValueError`` outside [0, 1])."""
    if not 0.0 <= float(margin) <= 1.0:
        raise ValueError(f"review margin {margin} must lie in [0, 1] (a difference of probabilities)")
    return repr(float(margin))


def postprocess_config(
    *,
    embedding_dim: int,
    n_classes: int,
    n_lineages: int,
    options: ServingOptions,
    review_margin: float = DEFAULT_REVIEW_MARGIN,
) -> mc.ModelConfig:
    """``smr_postprocess``: SVM probabilities, curve projections, stages and review flags (python
    backend, numpy), and a copy of its input as ``EMBEDDING_OUT`` (the ensemble's ``EMBEDDING``;
    see ``smr.core.contract``). ``review_margin``: the SVM margin of ``smr.core.review``."""
    options.validate()
    config = mc.ModelConfig(name=C.POSTPROCESS, backend="python", max_batch_size=options.max_batch_size)
    inputs = T.postprocess_inputs(embedding_dim)
    _add_tensors(config.input, inputs)
    _add_tensors(config.output, T.postprocess_outputs(n_classes, n_lineages, embedding_dim))
    config.parameters["curves_file"].string_value = "curves.json"
    config.parameters["svm_file"].string_value = "svm.json"
    config.parameters["manifest_file"].string_value = "../MANIFEST.json"
    config.parameters[REVIEW_MARGIN_PARAMETER].string_value = review_margin_text(review_margin)
    _add_scheduling(config, options, "cpu")
    # zero embeddings: the backbone never produces one (it L2-normalises), so the postprocess can
    # leave the warm-up out of its cell counters
    _add_warmup(config, inputs, options.warmup_batch_sizes, zeros=True)
    return config


def ensemble_config(
    *,
    image_size: int,
    embedding_dim: int,
    classes: Sequence[str],
    lineages: Sequence[dict[str, Any]],
    options: ServingOptions,
    parameters: Mapping[str, str] | None = None,
    review_margin: float = DEFAULT_REVIEW_MARGIN,
) -> mc.ModelConfig:
    """``smr``: IMAGE -> smr_backbone -> smr_postprocess -> outputs, with the class/lineage metadata.

    Every ensemble output comes from ``smr_postprocess`` (``EMBEDDING`` from its ``EMBEDDING_OUT``).
    ``parameters``: more string parameters (scale and provenance, see :data:`PROVENANCE_PARAMETERS`).
    ``review_margin``: the postprocess's, announced to clients (``smr.clients.model_info``).
    """
    options.validate()
    config = mc.ModelConfig(name=C.ENSEMBLE, platform="ensemble", max_batch_size=options.max_batch_size)
    _add_tensors(config.input, T.backbone_inputs(image_size))
    outputs = T.ensemble_outputs(len(classes), len(lineages), embedding_dim)
    _add_tensors(config.output, outputs)
    backbone = config.ensemble_scheduling.step.add(model_name=C.BACKBONE, model_version=-1)
    backbone.input_map[C.IMAGE] = C.IMAGE
    # the backbone's embedding stays internal to the ensemble: an ensemble output that a later step
    # also reads is dropped when a client does not request it, and the ensemble deadlocks
    backbone.output_map[C.EMBEDDING] = C.BACKBONE_EMBEDDING
    post = config.ensemble_scheduling.step.add(model_name=C.POSTPROCESS, model_version=-1)
    post.input_map[C.EMBEDDING] = C.BACKBONE_EMBEDDING
    for spec in outputs:
        post.output_map[T.ensemble_output_source(spec.name)] = spec.name
    config.parameters[CLASSES_PARAMETER].string_value = json.dumps(list(classes))
    config.parameters[LINEAGES_PARAMETER].string_value = json.dumps(list(lineages))
    config.parameters[IMAGE_SIZE_PARAMETER].string_value = str(image_size)
    config.parameters[EMBEDDING_DIM_PARAMETER].string_value = str(embedding_dim)
    config.parameters[REVIEW_MARGIN_PARAMETER].string_value = review_margin_text(review_margin)
    for key, value in (parameters or {}).items():
        if key in config.parameters:
            raise ValueError(f"ensemble parameter {key!r} is set by SMR itself")
        config.parameters[key].string_value = str(value)
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(path: str | Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` as a Triton ``ModelConfig``; ``ConfigFormatError`` names the file."""
    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ConfigFormatError(f"{path}: not a valid Triton model config: {exc}") from exc
