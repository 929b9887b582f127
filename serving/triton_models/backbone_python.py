"""Triton python model ``smr_backbone`` (``smr export --runtime python``): ONNX backbone via onnxruntime.

For servers that have the python backend but not the onnxruntime backend (the embedded
``tritonserver`` of the ``nvidia-pytriton`` wheel). ``smr export`` copies this file to
``smr_backbone/1/model.py`` beside ``model.onnx`` and ``smr_triton_io.py`` (the tensor I/O it
shares with ``smr_postprocess``, from ``triton_io.py``); it runs the same graph as the onnxruntime
backend would and gives the same outputs. It imports numpy, the standard library, Triton's
``triton_python_backend_utils``, onnxruntime and that copy only.

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

# no byte code beside the vendored module: serving leaves the repository as exported
_WRITE_BYTECODE, sys.dont_write_bytecode = sys.dont_write_bytecode, True
import smr_triton_io as triton_io  # noqa: E402

sys.dont_write_bytecode = _WRITE_BYTECODE

INPUT = "IMAGE"
OUTPUT = "EMBEDDING"


class TritonPythonModel:
    """The ONNX backbone in an onnxruntime session: uint8 (N, H, W, 3) -> float32 (N, D)."""

    def initialize(self, args: dict) -> None:
        triton_io.silence_dlpack_capsule_noise()
        config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", "smr_backbone")
        triton_io.verify_repository(args, config, self.model_name)  # before anything is loaded
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

        onnx_path = os.path.join(version_dir, triton_io.config_parameter(config, "onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(triton_io.config_parameter(config, "intra_op_threads", "0"))
        wanted = triton_io.config_parameter(config, "execution_providers", "CPUExecutionProvider").split(",")
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
        return triton_io.input_array(request, INPUT, "UINT8", self.image_shape)

    def _embed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        embedding = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(images)})[0]
        return {OUTPUT: embedding.astype(np.float32, copy=False)}

    def execute(self, requests):
        responses, _, _ = triton_io.batched_responses(requests, self._image, self._embed, self.model_name)
        return responses

    def finalize(self) -> None:
        self.session = None
