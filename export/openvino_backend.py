"""Triton's own OpenVINO backend as ``smr_backbone`` (``smr export --runtime openvino-backend``).

The NGC Triton image of docker-compose.yml ships Triton's ``openvino`` backend, which runs the
exported ``model.onnx`` in C++, with no python stub between the ensemble and OpenVINO. The
embedded ``tritonserver`` of ``smr serve`` (the ``nvidia-pytriton`` wheel) has the python backend
only and cannot load it; ``--runtime openvino`` is the same OpenVINO inside the python backend.

What the model's ``config.pbtxt`` tells the backend, and why:

- ``backend: "openvino"``, ``default_model_filename: "model.onnx"``: without a file name the
  backend looks for an OpenVINO IR ``model.xml``; it reads ONNX itself. For INT8 that file is the
  export's calibrated QDQ graph.
- ``max_batch_size: 0``, dims ``[-1, H, W, 3]`` -> ``[-1, D]``: given a ``max_batch_size`` the
  backend fixes the graph's batch dimension at that size and refuses every smaller batch (with
  ``ENABLE_BATCH_PADDING`` it computes a full batch of zeros around it instead). Without one, each
  request runs at its own batch size through the graph's dynamic batch dimension; the ensemble,
  which does batch, hands every request over whole. There is no dynamic batcher in front of the
  backbone then: concurrent requests run side by side on ``--instances`` instances.
- ``PERFORMANCE_HINT`` / ``NUM_STREAMS``: ``LATENCY`` and one stream for one instance,
  ``THROUGHPUT`` and one stream per instance for several (instances share one compiled model).
- ``INFERENCE_NUM_THREADS``: ``--intra-op-threads`` per instance, times the instances; omitted
  for 0 (OpenVINO's default: every core).
- ``HINT_BF16: "YES"`` for BF16 (matrix products in bfloat16). The backend has no parameter that
  keeps OpenVINO at f32, and OpenVINO's CPU plugin computes in bf16 unless told otherwise on CPUs
  with a bf16 matrix path: there, FP32 and the float parts of INT8 are computed in bf16 too.
  :func:`inference_precision` says which, and the export's accuracy check measures that
  (:func:`engine_precision`), not the precision's name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "RUNTIME",
    "BACKEND",
    "MODEL_FILE",
    "BF16_PARAMETER",
    "backend_parameters",
    "default_inference_precision",
    "inference_precision",
    "engine_precision",
    "computed_note",
    "parameter_problems",
    "config_problems",
]

log = logging.getLogger(__name__)

RUNTIME = "openvino-backend"  # the --runtime choice
BACKEND = "openvino"  # config.pbtxt's backend
MODEL_FILE = "model.onnx"  # the backend's default_model_filename (it would look for model.xml)
BF16_PARAMETER = "HINT_BF16"
_YES = "YES"


def backend_parameters(precision: str, *, instances: int = 1, threads: int = 0) -> dict[str, str]:
    """The backend's parameters for ``precision`` (fp32, bf16, int8), ``instances`` instances and
    ``threads`` inference threads per instance (0: OpenVINO's default)."""
    params = {
        "PERFORMANCE_HINT": "LATENCY" if instances == 1 else "THROUGHPUT",
        "NUM_STREAMS": str(instances),
    }
    if threads:
        params["INFERENCE_NUM_THREADS"] = str(threads * instances)
    if precision == "bf16":
        params[BF16_PARAMETER] = _YES
    return params


def default_inference_precision() -> str:
    """What OpenVINO's CPU plugin computes float operations in when not told: bf16 on CPUs with a
    bf16 matrix path, fp32 elsewhere (asked of the installed OpenVINO, for this machine)."""
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    default = "bf16" if hint == ov.Type.bf16 else "fp32"
    log.info("OpenVINO %s computes in %s on this CPU unless told otherwise", ov.__version__, default)
    return default


def inference_precision(precision: str, default: str) -> str:
    """The precision the backend computes float operations in for ``precision``, where OpenVINO's
    own choice is ``default`` (:func:`default_inference_precision`)."""
    return "bf16" if precision == "bf16" or default == "bf16" else "fp32"


def engine_precision(precision: str, default: str) -> str:
    """The precision of ``smr.serving.triton_models.engines.BackboneEngine`` (OpenVINO) that computes
    what the backend computes for ``precision``: bf16 on the same graph when the backend computes in
    bf16 (the INT8 graph's integer kernels stay integer), else ``precision`` itself."""
    return "bf16" if inference_precision(precision, default) == "bf16" else precision


def computed_note(precision: str, computed_in: str | None) -> str:
    """`` computed in BF16 on this CPU`` (FP32) or `` with its float parts in BF16 on this CPU``
    (INT8) where the backend computes ``precision``'s float operations in ``computed_in`` (bf16);
    "" when it computes them as the name says."""
    if computed_in != "bf16" or precision == "bf16":
        return ""
    if precision == "int8":
        return f" with its float parts in {computed_in.upper()} on this CPU"
    return f" computed in {computed_in.upper()} on this CPU"


def _is_count(value: str) -> bool:
    return value.isdigit()


# the parameters the backend reads (anything else it ignores), and the values it accepts
_ACCEPTS: dict[str, tuple[str, Any]] = {
    "PERFORMANCE_HINT": (
        "LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT",
        lambda v: v.upper() in ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"),
    ),
    "NUM_STREAMS": ("AUTO, NUMA or a number", lambda v: v.upper() in ("AUTO", "NUMA") or _is_count(v)),
    "INFERENCE_NUM_THREADS": ("a number >= 0", _is_count),
    "COMPILATION_NUM_THREADS": ("a number >= 0", _is_count),
    BF16_PARAMETER: ("YES", lambda v: v.upper() == _YES),
    "SKIP_OV_DYNAMIC_BATCHSIZE": ("YES or NO", lambda v: v.upper() in (_YES, "NO")),
    "ENABLE_BATCH_PADDING": ("YES or NO", lambda v: v.upper() in (_YES, "NO")),
    "RESHAPE_IO_LAYERS": ("YES or NO", lambda v: v.upper() in (_YES, "NO")),
    "CPU_EXTENSION_PATH": ("a path", bool),
}


def parameter_problems(parameters: Mapping[str, str], where: str) -> list[str]:
    """Parameters the backend refuses (it fails to load the model) or does not know (it ignores them)."""
    problems = []
    for key, value in sorted(parameters.items()):
        if key not in _ACCEPTS:
            problems.append(
                f"{where}: parameter {key!r} is not one of Triton's openvino backend, which ignores it "
                f"(it reads {', '.join(sorted(_ACCEPTS))})"
            )
        elif not _ACCEPTS[key][1](value):
            problems.append(
                f"{where}: parameter {key} {value!r} is refused by Triton's openvino backend; it takes "
                f"{_ACCEPTS[key][0]}"
            )
    return problems


def config_problems(config, where: str, *, precision: str | None = None) -> list[str]:
    """What Triton's openvino backend would refuse, or run otherwise than SMR exported it, in the
    backbone's ``config`` (a ``ModelConfig``); ``precision``: the manifest's chosen precision."""
    from tritonclient.grpc import model_config_pb2 as mc

    problems = parameter_problems({k: v.string_value for k, v in config.parameters.items()}, where)
    if config.default_model_filename != MODEL_FILE:
        problems.append(
            f"{where}: default_model_filename {config.default_model_filename!r}, expected {MODEL_FILE!r} "
            "(without it Triton's openvino backend looks for an OpenVINO IR model.xml)"
        )
    if config.max_batch_size != 0 or config.HasField("dynamic_batching"):
        problems.append(
            f"{where}: max_batch_size {config.max_batch_size} / dynamic_batching: Triton's openvino backend "
            "fixes the batch at max_batch_size and refuses smaller batches; SMR exports max_batch_size 0 "
            "with dims [-1, ...] (export the repository again)"
        )
    if any(g.kind != mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group):
        problems.append(f"{where}: Triton's openvino backend runs CPU instances only (KIND_CPU)")
    hinted = BF16_PARAMETER in config.parameters
    if precision is not None and hinted != (precision == "bf16"):
        problems.append(
            f"{where}: parameter {BF16_PARAMETER} {'set' if hinted else 'missing'}, but MANIFEST.json says "
            f"the backbone was exported at {precision}"
        )
    return problems
