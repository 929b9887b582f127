"""A small stand-in for Triton's ``triton_python_backend_utils``, to run the SMR python models in-process.

Only for offline unit tests: it implements the part of the python backend API that
``smr_postprocess`` and ``smr_backbone`` (python runtime) use, records custom metrics, and loads
a ``model.py`` from an exported repository the way the python backend stub does (the version
folder and the model folder on ``sys.path``, the model config as protobuf JSON). The real server
is exercised by the serving tests.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
import uuid
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from smr.export.pbtxt import parse_config


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self._msg, self._code = msg, code

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    pass


class Tensor:
    """Holds an array; the models read and write it through DLPack only.

    ``as_numpy()`` and building a ``Tensor`` from a numpy array in a model are what the 2.51 stub
    gets wrong with numpy 2 (empty outputs), so the fake refuses the first and tests check that
    outputs come from ``from_dlpack``.
    """

    def __init__(self, name: str, array: np.ndarray, *, via_dlpack: bool = False) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"pb_utils.Tensor needs a numpy array, got {type(array).__name__}")
        self._name, self._array, self.via_dlpack = name, array, via_dlpack

    @classmethod
    def from_dlpack(cls, name: str, capsule) -> Tensor:
        if isinstance(capsule, np.ndarray) and not capsule.flags.writeable:
            # the stub takes a legacy (unversioned) capsule, which cannot carry a read-only flag
            raise BufferError(f"{name}: cannot export a read-only array through a legacy DLPack capsule")
        array = np.from_dlpack(capsule)
        if not array.flags.c_contiguous:
            raise TritonModelException(f"{name}: DLPack tensors must be contiguous")
        return cls(name, array.copy(), via_dlpack=True)

    def __dlpack__(self, *args, **kwargs):
        return self._array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        raise AssertionError("as_numpy() is not numpy-2 safe in Triton 2.51's stub; read tensors with DLPack")


class InferenceRequest:
    def __init__(self, inputs: list[Tensor]) -> None:
        self._inputs = {t.name(): t for t in inputs}

    def inputs(self) -> list[Tensor]:
        return list(self._inputs.values())


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output(self, name: str) -> np.ndarray:
        for t in self._outputs:
            if t.name() == name:
                assert t.via_dlpack, f"{name} was not built with Tensor.from_dlpack"
                return t._array
        raise KeyError(name)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request._inputs.get(name)


class Metric:
    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None) -> None:
        self.family, self.labels, self.buckets = family, dict(labels), buckets
        self.total = 0.0
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        if self.family.kind != MetricFamily.COUNTER or value < 0:
            raise TritonModelException("increment is for counters, by a non-negative value")
        self.total += value

    def set(self, value: float) -> None:
        if self.family.kind != MetricFamily.GAUGE:
            raise TritonModelException("set is for gauges")
        self.total = value

    def observe(self, value: float) -> None:
        if self.family.kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("observe is for histograms")
        self.observations.append(float(value))

    def value(self) -> float:
        return self.total


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    registry: dict[str, MetricFamily] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []
        MetricFamily.registry[name] = self

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:  # noqa: N802
        if (self.kind == MetricFamily.HISTOGRAM) != (buckets is not None):
            raise TritonModelException("histograms need buckets; other kinds take none")
        if buckets is not None and list(buckets) != sorted(buckets):
            raise TritonModelException("buckets must be sorted")
        metric = Metric(self, labels or {}, buckets)
        self.metrics.append(metric)
        return metric

    def by_label(self, key: str) -> dict[str, Metric]:
        return {m.labels[key]: m for m in self.metrics}


class Logger:
    lines: list[str] = []

    @classmethod
    def log_info(cls, msg: str) -> None:
        cls.lines.append(f"I {msg}")

    @classmethod
    def log_warn(cls, msg: str) -> None:
        cls.lines.append(f"W {msg}")

    @classmethod
    def log_error(cls, msg: str) -> None:
        cls.lines.append(f"E {msg}")

    @classmethod
    def log_verbose(cls, msg: str) -> None:
        cls.lines.append(f"V {msg}")


def _as_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    for name in (
        "TritonError",
        "TritonModelException",
        "Tensor",
        "InferenceRequest",
        "InferenceResponse",
        "get_input_tensor_by_name",
        "MetricFamily",
        "Logger",
    ):
        setattr(module, name, globals()[name])
    return module


def request(**tensors: np.ndarray) -> InferenceRequest:
    """A request whose inputs, like the server's, read back through DLPack as read-only views."""
    inputs = []
    for name, array in tensors.items():
        array = np.array(array)
        array.flags.writeable = False
        inputs.append(Tensor(name, array))
    return InferenceRequest(inputs)


def load_model(repo: Path, model: str, version: str = "1"):
    """Import ``REPO/MODEL/VERSION/model.py`` as the python backend stub does; initialise it.

    Returns the ``TritonPythonModel`` instance. Its vendored modules (``smr_core``,
    ``smr_manifest``, ``smr_triton_io``) are imported from the repository, never from the installed
    package or the source tree, and fresh for each model (as each model has its own stub process).
    """
    model_dir = Path(repo) / model
    version_dir = model_dir / version
    config = parse_config(model_dir / "config.pbtxt")
    MetricFamily.registry = {}
    vendored = ("smr_core", "smr_manifest", "smr_triton_io")
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in vendored}
    sys.modules["triton_python_backend_utils"] = _as_module()
    sys.path[:0] = [str(version_dir), str(model_dir)]
    try:
        spec = importlib.util.spec_from_file_location(
            f"triton_model_{uuid.uuid4().hex}", version_dir / "model.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        instance = module.TritonPythonModel()
        instance.initialize(
            {
                "model_config": json.dumps(
                    json_format.MessageToDict(config, preserving_proto_field_name=True)
                ),
                "model_instance_kind": "CPU",
                "model_instance_name": f"{model}_0",
                "model_instance_device_id": "0",
                "model_repository": str(model_dir),
                "model_version": version,
                "model_name": model,
            }
        )
        instance._module = module
        return instance
    finally:
        for path in (str(version_dir), str(model_dir)):
            sys.path.remove(path)
        for k in [k for k in sys.modules if k.split(".")[0] in vendored]:
            del sys.modules[k]
        sys.modules.update(saved)
        del sys.modules["triton_python_backend_utils"]
