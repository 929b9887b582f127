"""Triton python model ``smr_backbone`` (``smr export --runtime python``): ONNX backbone via onnxruntime.

For servers that have the python backend but not the onnxruntime backend (the embedded
``tritonserver`` of the ``nvidia-pytriton`` wheel). ``smr export`` copies this file to
``smr_backbone/1/model.py`` beside ``model.onnx``; it runs the same graph as the onnxruntime
backend would and gives the same outputs. It imports numpy, the standard library, Triton's
``triton_python_backend_utils`` and onnxruntime only.

The configuration is read once in ``initialize``; ``execute`` stacks the images of all requests
into one batch, runs the session once and answers each request with its own rows. A request whose
``IMAGE`` has the wrong data type or shape gets an ``INVALID_ARGUMENT`` error naming the tensor.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT = "IMAGE"
OUTPUT = "EMBEDDING"


class BadRequest(ValueError):
    """A request the model cannot answer; becomes an INVALID_ARGUMENT error for that request only."""


def _parameter(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value else default


def _as_array(tensor) -> np.ndarray:
    """The tensor's data, through DLPack: under numpy 2 the python backend stub of Triton 2.51 (the
    embedded server) sends empty outputs for ``pb_utils.Tensor(name, array)``, so tensors go through
    DLPack both ways (``as_numpy()`` is the same numpy binding); DLPack works on Triton since 22.x."""
    try:
        return np.from_dlpack(tensor)
    except (TypeError, ValueError, BufferError, RuntimeError) as exc:
        raise BadRequest(f"input tensor {tensor.name()}: unsupported data ({exc})") from None


_DLPACK_CAPSULE_NOISE = "PyCapsule_GetPointer called with incorrect name"


def _silence_dlpack_capsule_noise() -> None:
    """Drop one harmless "Exception ignored" traceback that every response would otherwise print.

    With numpy 2, the python backend stub of Triton 2.51 (the embedded server) consumes the DLPack
    capsule of each output by a name numpy's capsule destructor does not expect; the destructor
    then reports ``ValueError: PyCapsule_GetPointer called with incorrect name`` through
    ``sys.unraisablehook`` although the tensor was already handed over intact. This wraps the
    hook in place: exactly that message is dropped, everything else goes to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_dlpack_capsule_noise", False):
        return

    def hook(unraisable) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, ValueError) and str(exc) == _DLPACK_CAPSULE_NOISE:
            return
        previous(unraisable)

    hook.drops_dlpack_capsule_noise = True
    sys.unraisablehook = hook


def _output(name: str, array: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _error(message: str, code: str = "INVALID_ARG"):
    code_value = getattr(pb_utils.TritonError, code, None)
    if code_value is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code_value)


class TritonPythonModel:
    """The ONNX backbone in an onnxruntime session: uint8 (N, H, W, 3) -> float32 (N, D)."""

    def initialize(self, args: dict) -> None:
        _silence_dlpack_capsule_noise()
        config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", "smr_backbone")
        version_dir = os.path.join(args["model_repository"], str(args.get("model_version", "1")))
        inputs = {t["name"]: t for t in config.get("input", [])}
        outputs = {t["name"]: t for t in config.get("output", [])}
        if list(inputs) != [INPUT] or list(outputs) != [OUTPUT]:
            raise ValueError(
                f"config.pbtxt: inputs {list(inputs)} / outputs {list(outputs)}, "
                f"expected [{INPUT!r}] / [{OUTPUT!r}]"
            )
        self.image_shape = tuple(int(d) for d in inputs[INPUT]["dims"])
        if (
            inputs[INPUT]["data_type"] != "TYPE_UINT8"
            or len(self.image_shape) != 3
            or self.image_shape[2] != 3
        ):
            raise ValueError(f"config.pbtxt: {INPUT} must be TYPE_UINT8 with dims [H, W, 3]")
        self.embedding_dim = int(outputs[OUTPUT]["dims"][0])

        onnx_path = os.path.join(version_dir, _parameter(config, "onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "0"))
        wanted = _parameter(config, "execution_providers", "CPUExecutionProvider").split(",")
        available = ort.get_available_providers()
        providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        if providers != wanted:
            pb_utils.Logger.log_warn(
                f"{self.model_name}: execution providers {wanted} requested, {providers} available"
            )
        self.session = ort.InferenceSession(onnx_path, sess_options=options, providers=providers)
        graph_inputs = [i.name for i in self.session.get_inputs()]
        graph_outputs = [o.name for o in self.session.get_outputs()]
        if graph_inputs != [INPUT] or graph_outputs != [OUTPUT]:
            raise ValueError(
                f"{onnx_path}: graph inputs {graph_inputs} / outputs {graph_outputs} do not "
                f"match config.pbtxt [{INPUT}] / [{OUTPUT}]"
            )
        pb_utils.Logger.log_info(f"{self.model_name}: {onnx_path} on {providers}, image {self.image_shape}")

    def _image(self, request) -> np.ndarray:
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
        if tensor is None:
            raise BadRequest(f"input tensor {INPUT} is missing")
        x = _as_array(tensor)
        if x.dtype != np.uint8:
            raise BadRequest(f"input tensor {INPUT}: expected data type UINT8, got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise BadRequest(
                f"input tensor {INPUT}: expected shape [batch, {', '.join(map(str, self.image_shape))}], "
                f"got {list(x.shape)}"
            )
        return x

    def execute(self, requests):
        responses = [None] * len(requests)
        batch, owners = [], []
        for i, request in enumerate(requests):
            try:
                batch.append(self._image(request))
                owners.append(i)
            except BadRequest as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_error(str(exc)))
        if not batch:
            return responses
        images = np.concatenate(batch) if len(batch) > 1 else batch[0]
        try:
            embedding = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(images)})[0]
        except Exception as exc:  # answer every request rather than failing the whole execute
            for i in owners:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=_error(f"{self.model_name}: {type(exc).__name__}: {exc}", "INTERNAL"),
                )
            return responses
        offset = 0
        for i, x in zip(owners, batch, strict=True):
            rows = embedding[offset : offset + len(x)]
            offset += len(x)
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[_output(OUTPUT, rows.astype(np.float32, copy=False))]
            )
        return responses

    def finalize(self) -> None:
        self.session = None
