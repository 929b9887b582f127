"""How SMR runs its ONNX backbone in a Python process: onnxruntime or OpenVINO, at FP32, BF16 or INT8.

One definition for both sides: ``smr export`` measures and checks each precision with
:class:`BackboneEngine` in its own process, and the served ``smr_backbone`` (python backend,
``--runtime python`` or ``--runtime openvino``) runs the same class, copied beside its
``model.py`` as ``smr_engines.py``. It imports numpy, the standard library and the tensor names
(``smr_core.contract`` beside the served model, ``smr.core.contract`` elsewhere) at module level;
onnxruntime or OpenVINO only when an engine of that kind is made.

Precisions:

- ``fp32``: the exported FP32 graph. OpenVINO is told ``INFERENCE_PRECISION_HINT=f32``: on CPUs
  with AVX-512 BF16 or AMX its default would silently be bf16.
- ``bf16``: the FP32 graph run by OpenVINO with ``INFERENCE_PRECISION_HINT=bf16`` (matrix products
  in bfloat16, accumulation in float32). Fast only where the CPU has ``avx512_bf16`` or ``amx_bf16``;
  onnxruntime's CPU provider has no such mode.
- ``int8``: the calibrated QDQ graph of ``smr export`` (``export/quantize.py``), which both runtimes
  execute with integer kernels (fast with VNNI or AMX-INT8); the parts left in float stay FP32.
"""

from __future__ import annotations

import os

import numpy as np

try:  # the copy beside the served model.py (smr_backbone/1/smr_core/), whatever else is installed
    from smr_core.contract import EMBEDDING, IMAGE
except ImportError:  # in the smr package
    from smr.core.contract import EMBEDDING, IMAGE

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "ENGINE_PRECISIONS",
    "PRECISION_CPU_FLAGS",
    "BackboneEngine",
    "cpu_flags",
    "missing_cpu_features",
]

ENGINES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
ENGINE_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
# the CPU flags (/proc/cpuinfo) that give a precision its hardware path; any one of them will do
PRECISION_CPU_FLAGS = {
    "fp32": (),
    "bf16": ("avx512_bf16", "amx_bf16"),
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
}
# OpenVINO's INFERENCE_PRECISION_HINT per precision (int8 comes from the QDQ graph, not the hint)
_OPENVINO_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def cpu_flags() -> set[str]:
    """The flags of this machine's CPU from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def missing_cpu_features(recorded, flags: set[str] | None = None) -> list[str]:
    """The features in ``recorded`` (what a precision was chosen for) that this CPU lacks."""
    have = cpu_flags() if flags is None else flags
    return [f for f in recorded if f not in have]


class BackboneEngine:
    """The backbone graph in one runtime at one precision: uint8 (N, H, W, 3) -> float32 (N, D).

    ``threads`` = 0 leaves the runtime's default (every core). ``providers``: onnxruntime execution
    providers, in order of preference (those not available are dropped); TensorRT's builds its
    engines at ``tensorrt_precision`` (fp16 or fp32), cached in the temporary folder. Not thread-safe: one
    engine per thread, as the python backend runs one ``execute`` at a time per instance.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        engine: str,
        precision: str,
        *,
        threads: int = 0,
        providers: list[str] | None = None,
        tensorrt_precision: str = "fp32",
        input_name: str = IMAGE,
        output_name: str = EMBEDDING,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is not valid; choose one of: {', '.join(ENGINES)}")
        if precision not in ENGINE_PRECISIONS[engine]:
            raise ValueError(
                f"{engine} cannot run precision {precision!r}; it runs {', '.join(ENGINE_PRECISIONS[engine])}"
            )
        self.engine, self.precision = engine, precision
        self.path = os.fspath(onnx_path)
        self.input_name, self.output_name = input_name, output_name
        self.providers: list[str] = []
        if engine == "onnxruntime":
            self._run = self._onnxruntime(threads, providers or ["CPUExecutionProvider"], tensorrt_precision)
        else:
            self._run = self._openvino(threads)

    def _onnxruntime(self, threads: int, wanted: list[str], tensorrt_precision: str):
        import tempfile

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        available = ort.get_available_providers()
        self.providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        trt = {
            "trt_fp16_enable": tensorrt_precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": os.path.join(tempfile.gettempdir(), "smr-tensorrt-cache"),
        }
        chosen = [(p, trt) if p == "TensorrtExecutionProvider" else p for p in self.providers]
        session = ort.InferenceSession(self.path, sess_options=options, providers=chosen)
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        self._check_names(*names)
        outputs, name = [self.output_name], self.input_name
        return lambda images: session.run(outputs, {name: images})[0]

    def _openvino(self, threads: int):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(self.path)
        names = ([i.get_any_name() for i in model.inputs], [o.get_any_name() for o in model.outputs])
        self._check_names(*names)
        config = {"INFERENCE_PRECISION_HINT": _OPENVINO_HINT[self.precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        self.providers = ["OpenVINO CPU"]

        def run(images: np.ndarray) -> np.ndarray:
            # the output tensor is the request's own memory, overwritten by the next call: copy it
            return np.array(request.infer({0: images}, share_inputs=True)[0], dtype=np.float32, copy=True)

        return run

    def _check_names(self, inputs: list[str], outputs: list[str]) -> None:
        if inputs != [self.input_name] or outputs != [self.output_name]:
            raise ValueError(
                f"{self.path}: graph inputs {inputs} / outputs {outputs}, expected "
                f"[{self.input_name}] / [{self.output_name}]"
            )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = self._run(np.ascontiguousarray(images))
        return out.astype(np.float32, copy=False)

    def embed(self, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """Embeddings of many images, ``batch_size`` at a time."""
        parts = [self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def describe(self) -> str:
        return f"{self.engine} {self.precision} on {', '.join(self.providers)}"
