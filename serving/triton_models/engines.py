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
from collections.abc import Callable
from typing import Any

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
    "SCHEDULING_PARAMETERS",
    "BackboneEngine",
    "cpu_flags",
    "openvino_config",
    "scheduling_options",
    "split_bounds",
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
# How the graph is scheduled when the model config does not say (see openvino_config): OpenVINO
# with several streams of few threads each, every batch split among them (0 = OpenVINO's own count
# for PERFORMANCE_HINT=THROUGHPUT: one stream per core on a 2-core machine); each stream takes
# PARTS_PER_STREAM parts of at least MIN_PART images, so a stream slowed by other work on its core
# (the server, the postprocess, the clients) leaves the last parts to the others.
OPENVINO_STREAMS = 0
PARTS_PER_STREAM = 2
MIN_PART = 4
# onnxruntime's intra-op threads spin between operators: 8 % faster here, in-process and served
ORT_SPINNING = True


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
        streams: int = 0,
        pinning: bool | None = None,
        spinning: bool | None = None,
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
        self.settings: dict[str, Any] = {}  # the runtime's scheduling settings, as it reports them
        if engine == "onnxruntime":
            self._run = self._onnxruntime(
                threads, spinning, providers or ["CPUExecutionProvider"], tensorrt_precision
            )
        else:
            self._run = self._openvino(threads, streams, pinning)

    def _onnxruntime(self, threads: int, spinning: bool | None, wanted: list[str], tensorrt_precision: str):
        import tempfile

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        spin = ORT_SPINNING if spinning is None else spinning
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.settings = {"threads": threads or "default", "spinning": spin}
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

    def _openvino(self, threads: int, streams: int, pinning: bool | None):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(self.path)
        names = ([i.get_any_name() for i in model.inputs], [o.get_any_name() for o in model.outputs])
        self._check_names(*names)
        config = openvino_config(self.precision, threads, streams, pinning)
        compiled = core.compile_model(model, "CPU", config)
        self.providers = ["OpenVINO CPU"]
        self.settings = {
            key.lower(): compiled.get_property(key)
            for key in ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "ENABLE_CPU_PINNING")
        }
        streams = max(1, int(self.settings["num_streams"]))
        if streams == 1:
            return _single_runner(compiled.create_infer_request())
        return _split_runner(
            [compiled.create_infer_request() for _ in range(PARTS_PER_STREAM * streams)], streams
        )

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
        settings = ", ".join(f"{key} {value}" for key, value in self.settings.items())
        return f"{self.engine} {self.precision} on {', '.join(self.providers)}" + (
            f" ({settings})" if settings else ""
        )


# model config parameters (string values) that set BackboneEngine's scheduling; "" or absent: default
SCHEDULING_PARAMETERS = {"intra_op_threads": "threads", "streams": "streams", "cpu_pinning": "pinning",
                         "spinning": "spinning"}  # fmt: skip


def scheduling_options(parameter: Callable[[str], str]) -> dict[str, Any]:
    """BackboneEngine's keyword arguments from the backbone's config parameters.

    ``parameter(key)`` returns the parameter's string value, or "" when it is not set: the served
    model (``triton_io.config_parameter``) and the in-process baseline (``smr bench``) read the same
    keys, so both sides run the graph the same way.
    """
    options: dict[str, Any] = {}
    for key, name in SCHEDULING_PARAMETERS.items():
        text = (parameter(key) or "").strip().lower()
        if not text:
            continue
        if name in ("threads", "streams"):
            options[name] = int(text)
        elif text in ("1", "true", "yes", "on"):
            options[name] = True
        elif text in ("0", "false", "no", "off"):
            options[name] = False
        else:
            raise ValueError(f"config parameter {key}: {text!r} is not a boolean (true/false)")
    return options


def openvino_config(precision: str, threads: int, streams: int, pinning: bool | None) -> dict:
    """OpenVINO's CPU compile settings: the precision hint, then how the graph is scheduled.

    ``streams`` 1: one stream over ``threads`` threads (``PERFORMANCE_HINT=LATENCY``); 0: as many
    streams as OpenVINO chooses for ``PERFORMANCE_HINT=THROUGHPUT``; more: that many streams, among
    which :class:`BackboneEngine` splits each batch. ``threads`` 0: every core. ``pinning`` None:
    OpenVINO's default (threads pinned to cores on Linux).
    """
    streams = OPENVINO_STREAMS if streams < 0 else streams
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": _OPENVINO_HINT[precision]}
    if streams == 1:
        config["PERFORMANCE_HINT"] = "LATENCY"
    else:
        config["PERFORMANCE_HINT"] = "THROUGHPUT"
        if streams > 1:
            config["NUM_STREAMS"] = streams
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if pinning is not None:
        config["ENABLE_CPU_PINNING"] = bool(pinning)
    return config


def _single_runner(request):
    def run(images: np.ndarray) -> np.ndarray:
        # the output tensor is the request's own memory, overwritten by the next call: copy it
        return np.array(request.infer({0: images}, share_inputs=True)[0], dtype=np.float32, copy=True)

    return run


def split_bounds(n: int, streams: int, parts: int) -> list[int]:
    """Where a batch of ``n`` is cut for ``streams`` streams with at most ``parts`` requests: one part
    per stream at least (``n`` permitting), more of ``MIN_PART`` images or more up to ``parts``;
    the parts differ by one image at most."""
    count = max(1, min(n, max(streams, min(parts, n // MIN_PART))))
    return [n * i // count for i in range(count + 1)]


def _split_runner(requests: list, streams: int):
    """Each batch cut into contiguous parts, queued at once on the streams, concatenated in order."""

    def run(images: np.ndarray) -> np.ndarray:
        bounds = split_bounds(len(images), streams, len(requests))
        used = requests[: len(bounds) - 1]
        for request, lo, hi in zip(used, bounds[:-1], bounds[1:], strict=True):
            request.start_async({0: images[lo:hi]}, share_inputs=True)
        for request in used:
            request.wait()
        # concatenate copies out of the requests' own output memory
        return np.concatenate([request.get_output_tensor(0).data for request in used]).astype(
            np.float32, copy=False
        )

    return run
