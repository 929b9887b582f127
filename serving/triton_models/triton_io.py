"""Tensor I/O and errors shared by SMR's Triton python models (``smr_backbone``, ``smr_postprocess``).

``smr export`` copies this file as ``smr_triton_io.py`` beside each python model's ``model.py``
(the python backend puts the version folder on ``sys.path``), and the models import it under that
name. Like them, it imports numpy, the standard library, Triton's ``triton_python_backend_utils``
and the vendored ``smr_core.contract`` (beside both models) only, so it runs on a stock Triton
image where the ``smr`` package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable

import numpy as np
import triton_python_backend_utils as pb_utils
from smr_core.contract import POSTPROCESS

__all__ = [
    "DATA_TYPES",
    "BadRequest",
    "batched_responses",
    "config_parameter",
    "verify_repository",
    "input_array",
    "is_probe",
    "output_tensor",
    "silence_dlpack_capsule_noise",
    "triton_error",
]


class BadRequest(ValueError):
    """A request the model cannot answer; becomes an INVALID_ARGUMENT error for that request only."""


def config_parameter(config: dict, key: str, default: str) -> str:
    """The ``string_value`` of ``parameters[key]`` in the model config, or ``default`` when unset."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value if value else default


# Triton's data type names (config.pbtxt ``TYPE_*`` without the prefix) of the numpy dtypes
DATA_TYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


def _from_dlpack(tensor) -> np.ndarray:
    """The tensor's data, through DLPack: under numpy 2 the python backend stub of Triton 2.51 (the
    embedded server) sends empty outputs for ``pb_utils.Tensor(name, array)``, so tensors go through
    DLPack both ways (``as_numpy()`` is the same numpy binding); DLPack works on Triton since 22.x."""
    try:
        return np.from_dlpack(tensor)
    except (TypeError, ValueError, BufferError, RuntimeError) as exc:
        raise BadRequest(f"input tensor {tensor.name()}: unsupported data ({exc})") from None


def input_array(request, name: str, data_type: str, dims: tuple[int, ...]) -> np.ndarray:
    """The request's input ``name``: an array of Triton type ``data_type`` (``"FP32"``) and shape
    ``(batch, *dims)``, read through DLPack (possibly a read-only view). Raises ``BadRequest`` naming the
    tensor, what was expected and what came, when it is missing or is not that."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise BadRequest(f"input tensor {name} is missing")
    x = _from_dlpack(tensor)
    if x.dtype != DATA_TYPES[data_type]:
        raise BadRequest(f"input tensor {name}: expected data type {data_type}, got {x.dtype}")
    if x.ndim != 1 + len(dims) or tuple(x.shape[1:]) != tuple(dims):
        raise BadRequest(
            f"input tensor {name}: expected shape [batch, {', '.join(map(str, dims))}], got {list(x.shape)}"
        )
    return x


def is_probe(request) -> bool:
    """True for a request with the parameter ``smr_probe`` (``smr serve``'s probe inferences)."""
    parameters = getattr(request, "parameters", None)
    if parameters is None:
        return False
    try:
        return bool(json.loads(parameters() or "{}").get("smr_probe", False))
    except (TypeError, ValueError):
        return False


def output_tensor(name: str, array: np.ndarray):
    """An output tensor built through DLPack (see ``_from_dlpack`` for why not ``pb_utils.Tensor``)."""
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def triton_error(message: str, code: str = "INVALID_ARG"):
    """A ``TritonError`` with the code named ``code`` (plain, on backends without error codes)."""
    code_value = getattr(pb_utils.TritonError, code, None)
    if code_value is None:  # python backends before error codes existed
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code_value)


def batched_responses(
    requests: list,
    read: Callable[[object], np.ndarray],
    compute: Callable[[np.ndarray], dict[str, np.ndarray]],
    model_name: str,
) -> tuple[list, np.ndarray | None, dict[str, np.ndarray] | None]:
    """One response per request, from a single ``compute`` over the rows of all of them.

    ``read(request)`` gives a request's rows; a ``BadRequest`` it raises becomes that request's
    ``INVALID_ARG`` error and leaves the others alone. The rows of the other requests are stacked,
    ``compute`` runs once and returns row-aligned outputs by name, and each request is answered with
    its own rows. An exception in ``compute`` becomes an ``INTERNAL`` error for every request of the
    batch rather than failing the whole ``execute``. Returns the responses, the stacked rows (None
    when no request was readable) and the outputs (None when none were computed).
    """
    responses = [None] * len(requests)
    batch, owners = [], []
    for i, request in enumerate(requests):
        try:
            batch.append(read(request))
            owners.append(i)
        except BadRequest as exc:
            responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=triton_error(str(exc)))
    if not batch:
        return responses, None, None
    rows = np.concatenate(batch) if len(batch) > 1 else batch[0]
    try:
        outputs = compute(rows)
    except Exception as exc:  # answer every request rather than failing the whole execute
        for i in owners:
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[],
                error=triton_error(f"{model_name}: {type(exc).__name__}: {exc}", "INTERNAL"),
            )
        return responses, rows, None
    offset = 0
    for i, x in zip(owners, batch, strict=True):
        own = slice(offset, offset + len(x))
        offset += len(x)
        tensors = [output_tensor(name, value[own]) for name, value in outputs.items()]
        responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
    return responses, rows, outputs


_DLPACK_CAPSULE_NOISE = "PyCapsule_GetPointer called with incorrect name"


def silence_dlpack_capsule_noise() -> None:
    """Drop one harmless "Exception ignored" traceback that every response would otherwise print.

    With numpy 2, the python backend stub of Triton 2.51 (the embedded server) consumes the DLPack
    capsule of each output by a name numpy's capsule destructor does not expect; the destructor
    then reports ``ValueError: PyCapsule_GetPointer called with incorrect name`` through
    ``sys.unraisablehook`` although the tensor was already handed over intact. This wraps the
    hook in place: exactly that message is dropped, everything else goes to the previous hook.
    Calling it again (a second model instance in the same process) wraps nothing more.
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


# --------------------------------------------------------------------------------------------
# The repository check every python model runs in ``initialize``

MANIFEST_MODULE = "smr_manifest"  # export/manifest.py, copied beside smr_postprocess's model.py
_MANIFEST_HOME = os.path.join(POSTPROCESS, "1", MANIFEST_MODULE + ".py")


def _manifest_module(repo: str):
    """The manifest checker: beside this model (``import smr_manifest``), else the repository's copy
    beside ``smr_postprocess`` (itself one of the files it checks). No byte code is written."""
    write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        try:
            import smr_manifest

            return smr_manifest
        except ImportError:
            pass
        path = os.path.join(repo, _MANIFEST_HOME)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: missing; the repository is not an SMR export")
        spec = importlib.util.spec_from_file_location(MANIFEST_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.dont_write_bytecode = write_bytecode


def _server_started() -> float | None:
    """When this process's parent (the tritonserver that started the stub) started, or None."""
    try:
        with open(f"/proc/{os.getppid()}/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _remove_own_bytecode(version_dir: str) -> None:
    """Remove the ``__pycache__/model.*.pyc`` that importing this model.py just wrote.

    A python backend that lets Python write byte code (a full Triton on a writable repository; the
    embedded server of ``smr serve`` turns it off) leaves the cache of ``model.py`` beside it, which
    the manifest refuses. Only a cache written since this server started is removed: an older one
    was planted, and the manifest check names it.
    """
    cache = importlib.util.cache_from_source(os.path.join(version_dir, "model.py"))
    started = _server_started()
    try:
        if started is None or os.stat(cache).st_mtime < started - 2:
            return
        os.remove(cache)
        os.rmdir(os.path.dirname(cache))
    except OSError:
        pass  # no cache, a read-only repository, or other files in __pycache__ (named by the check)


def verify_repository(args: dict, config: dict, model_name: str) -> None:
    """Refuse to load (``ValueError`` naming every file) when the repository does not match its
    ``MANIFEST.json``: a file changed, missing or added, an extra model folder, or byte code."""
    model_dir = args["model_repository"]
    version_dir = os.path.join(model_dir, str(args.get("model_version", "1")))
    _remove_own_bytecode(version_dir)
    manifest_path = os.path.normpath(
        os.path.join(model_dir, config_parameter(config, "manifest_file", "../MANIFEST.json"))
    )
    repo = os.path.dirname(manifest_path)
    manifest = _manifest_module(repo)
    try:
        manifest.verify_manifest(repo)
    except manifest.ManifestError as exc:
        raise ValueError(f"{model_name}: refusing to load: {exc}") from None
