"""Triton python model ``smr_backbone`` (``smr export --runtime python|openvino``): the ONNX backbone.

For servers that have the python backend but not the onnxruntime or OpenVINO backends (the
embedded ``tritonserver`` of the ``nvidia-pytriton`` wheel). ``smr export`` copies this file to
``smr_backbone/1/model.py`` beside ``model.onnx``, ``smr_triton_io.py`` (the tensor I/O it shares
with ``smr_postprocess``, from ``triton_io.py``), ``smr_engines.py`` (``engines.py``: the
runtime and precision, the same code ``smr export`` checked them with) and
``smr_core/contract.py`` (the tensor names, from ``smr.core.contract``). The config's parameters
``engine`` (onnxruntime or openvino) and ``precision`` (fp32, bf16, int8) choose how the graph
runs; the model is compiled once, in ``initialize``. It imports numpy, the standard library,
Triton's ``triton_python_backend_utils``, onnxruntime or OpenVINO, and those copies only.

The configuration is read once in ``initialize``; ``execute`` stacks the images of all requests
into one batch, runs the session once and answers each request with its own rows. A request whose
``IMAGE`` has the wrong data type or shape gets an ``INVALID_ARGUMENT`` error naming the tensor.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# no byte code beside the vendored modules: serving leaves the repository as exported
_WRITE_BYTECODE, sys.dont_write_bytecode = sys.dont_write_bytecode, True
import smr_engines as engines  # noqa: E402
import smr_triton_io as triton_io  # noqa: E402
from smr_core import contract as C  # noqa: E402

sys.dont_write_bytecode = _WRITE_BYTECODE

INPUT = C.IMAGE
OUTPUT = C.EMBEDDING


class TritonPythonModel:
    """The ONNX backbone in onnxruntime or OpenVINO: uint8 (N, H, W, 3) -> float32 (N, D)."""

    def initialize(self, args: dict) -> None:
        triton_io.silence_dlpack_capsule_noise()
        config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", C.BACKBONE)
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
        engine = triton_io.config_parameter(config, "engine", "onnxruntime")
        precision = triton_io.config_parameter(config, "precision", "fp32")
        wanted = triton_io.config_parameter(config, "execution_providers", "CPUExecutionProvider").split(",")
        self.engine = engines.BackboneEngine(
            onnx_path,
            engine,
            precision,
            providers=wanted,
            tensorrt_precision=triton_io.config_parameter(config, "tensorrt_precision", "fp32"),
            input_name=INPUT,
            output_name=OUTPUT,
            **engines.scheduling_options(lambda key: triton_io.config_parameter(config, key, "")),
        )
        if engine == "onnxruntime" and self.engine.providers != wanted:
            pb_utils.Logger.log_warn(
                f"{self.model_name}: execution providers {wanted} requested, "
                f"{self.engine.providers} available"
            )
        recorded = [f for f in triton_io.config_parameter(config, "cpu_features", "").split(",") if f]
        missing = engines.missing_cpu_features(recorded)
        if missing:
            pb_utils.Logger.log_warn(
                f"{self.model_name}: {precision} was chosen for a CPU with {', '.join(recorded)}; this CPU "
                f"lacks {', '.join(missing)} and will run it slower (export again on this machine with "
                "--precision auto)"
            )
        pb_utils.Logger.log_info(
            f"{self.model_name}: {onnx_path} on {self.engine.describe()}, image {self.image_shape}"
        )

    def _image(self, request) -> np.ndarray:
        return triton_io.input_array(request, INPUT, "UINT8", self.image_shape)

    def _embed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {OUTPUT: self.engine(images)}

    def execute(self, requests):
        responses, _, _ = triton_io.batched_responses(requests, self._image, self._embed, self.model_name)
        return responses

    def finalize(self) -> None:
        self.engine = None
