"""Start a local Triton Inference Server on an SMR model repository and wait until it serves.

``TritonProcess`` is the Python API (``smr serve``, the tests and the demo use it)::

    with TritonProcess("model_repository") as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

Which ``tritonserver`` runs: the one given explicitly, else ``$TRITONSERVER``, else the first on
``PATH``, else the server shipped in the ``nvidia-pytriton`` wheel. The wheel's server needs three
things that a full Triton install has by itself: its bundled libraries on ``LD_LIBRARY_PATH``, the
python backend stub built for the running Python placed next to the python backend (we stage a
copy of the backend in a private work directory, so nothing in site-packages is written), and the
running Python's ``libpython`` plus its environment (the stub embeds Python and finds the
environment by looking up ``python3`` on ``PATH``, so the environment's ``bin`` goes first).

The server binds to the loopback address unless told otherwise, loads every model in the
repository, exits on a model that fails to load (its own log lines end up in the error), and is
stopped with SIGTERM (SIGKILL after a grace period). It is locked down by default: HTTP is off
(``http=True`` turns it on), the shared-memory, model-repository, logging and trace APIs need a
per-start secret (``admin_headers()``, kept in a 0600 file), its shared memory is private (umask
077) and removed after it stops, and it dies with the process that started it. ``probe()`` runs a
real inference; ``restart()`` replaces a broken server on the same ports (the supervisor of ``smr
serve`` uses both, see supervisor.py). See docs/serving.md for every setting.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import logging
import math
import os
import re
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smr.core.contract import ENSEMBLE

from . import shm
from .triton_messages import is_stub_unhealthy

LOOPBACK = "127.0.0.1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
MIB = 1 << 20

_DTYPE_BYTES = {
    "TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_UINT16": 2, "TYPE_INT16": 2,
    "TYPE_FP16": 2, "TYPE_BF16": 2, "TYPE_UINT32": 4, "TYPE_INT32": 4, "TYPE_FP32": 4,
    "TYPE_UINT64": 8, "TYPE_INT64": 8, "TYPE_FP64": 8,
}  # fmt: skip
# APIs that need the per-start secret (Triton's --grpc-restricted-protocol / --http-restricted-api):
# registering shared memory (the python backend's own regions included), loading and unloading
# models, changing the log settings and tracing. Health, metadata, config, statistics and inference
# stay open: clients and `smr bench` use them.
RESTRICTED_APIS = ("shared-memory", "model-repository", "logging", "trace")
ADMIN_KEY = "smr-admin-key"  # the header HTTP checks; gRPC checks it with Triton's prefix below
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"
ADMIN_KEY_FILE = "admin-key"
STUB_NAME = "triton_python_backend_stub"
log = logging.getLogger(__name__)
_LOG_ERROR_LINE = re.compile(r"^(E\d{4} |error:|.*\bfailed to load\b|.*Traceback|.*Error\b)")


class TritonError(RuntimeError):
    """Base class of the launcher's errors; the message says what went wrong and how to fix it."""


class TritonNotFoundError(TritonError):
    """No usable ``tritonserver`` binary."""


class RepositoryError(TritonError):
    """The model repository cannot be served (missing, unparsable, wrong backend, bad manifest)."""


class TritonStartError(TritonError):
    """The server died or never became ready; ``log`` holds its output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class ProbeError(TritonError):
    """A probe inference failed; ``status`` is the gRPC status ("StatusCode.INTERNAL") or ""."""

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message)
        self.status = status

    @property
    def stub_died(self) -> bool:
        """The python backend reports a dead stub process (the server never recovers by itself)."""
        return is_stub_unhealthy(str(self))


# --------------------------------------------------------------------------------------------
# Finding the server


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` binary and what it needs to run the python backend."""

    executable: Path
    source: str  # where it was found, for messages
    python_backend: Path | None = None  # backend folder to stage (wheel only); None: the server's own
    stub: Path | None = None  # python backend stub for this Python (wheel only)
    library_dirs: tuple[Path, ...] = ()

    @property
    def is_embedded(self) -> bool:
        """True for the wheel's server, which has the python backend only."""
        return self.python_backend is not None


def pytriton_server_dir() -> Path | None:
    """The ``tritonserver`` folder of the installed ``nvidia-pytriton`` wheel (not imported)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return path if (path / "bin" / "tritonserver").is_file() else None


def _python_libdir() -> Path:
    """The folder with this Python's shared ``libpython`` (the stub links against it)."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or "")
    soname = (
        sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so"
    )
    if not (libdir / soname).exists():
        raise TritonNotFoundError(
            f"this Python ({sys.executable}) has no shared library {soname} in {libdir}; the embedded "
            "tritonserver's python backend stub needs a Python built with --enable-shared "
            "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared), or pass --tritonserver / $TRITONSERVER"
        )
    return libdir


def _wheel_install(server_dir: Path) -> TritonInstall:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stubs = server_dir / "python_backend_stubs"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in stubs.iterdir() if p.is_dir()) if stubs.is_dir() else []
        raise TritonNotFoundError(
            f"the nvidia-pytriton wheel has no python backend stub for Python {version} "
            f"(it has: {', '.join(available) or 'none'}); run SMR with one of those Python versions"
        )
    libs = server_dir.parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(
        executable=server_dir / "bin" / "tritonserver",
        source="the nvidia-pytriton wheel",
        python_backend=server_dir / "backends" / "python",
        stub=stub,
        library_dirs=(_python_libdir(), libs),
    )


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> TritonInstall:
    """Locate ``tritonserver``: ``explicit``, ``$TRITONSERVER``, ``PATH``, then the wheel's."""
    wheel_dir = pytriton_server_dir()
    candidates: list[tuple[str, str | None]] = [
        ("--tritonserver", os.fspath(explicit) if explicit else None),
        ("$TRITONSERVER", os.environ.get("TRITONSERVER") or None),
        ("PATH", shutil.which("tritonserver")),
    ]
    for source, value in candidates:
        if value is None:
            continue
        path = Path(value).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TritonNotFoundError(f"{source} points at {path}, which is not an executable tritonserver")
        if wheel_dir is not None and path.resolve() == (wheel_dir / "bin" / "tritonserver").resolve():
            return _wheel_install(wheel_dir)
        return TritonInstall(executable=path, source=source)
    if wheel_dir is None:
        raise TritonNotFoundError(
            "no tritonserver found: not given with --tritonserver, $TRITONSERVER unset, none on PATH, "
            "and the nvidia-pytriton wheel is not installed (pip install --no-deps nvidia-pytriton)"
        )
    return _wheel_install(wheel_dir)


# --------------------------------------------------------------------------------------------
# Reading the repository


@dataclass(frozen=True)
class RepositoryInfo:
    """What the launcher needs to know about a model repository."""

    path: Path
    models: dict[str, str]  # model name -> backend ("python", "onnxruntime", "ensemble", ...)
    max_batch_size: int  # of the served model
    largest_batch_bytes: int  # largest input batch a python model receives (0: unknown)
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...] = ()  # served model: (name, "UINT8", dims)


def _backend_of(config) -> str:
    if config.backend:
        return config.backend
    platform = config.platform
    if platform == "ensemble":
        return "ensemble"
    if platform.startswith("onnxruntime"):
        return "onnxruntime"
    if platform.startswith("tensorrt"):
        return "tensorrt"
    if platform.startswith("pytorch"):
        return "pytorch"
    return platform or "unknown"


def read_repository(repository: str | os.PathLike[str], model: str = ENSEMBLE) -> RepositoryInfo:
    """Parse every ``config.pbtxt`` of ``repository`` and check that ``model`` is among them."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = Path(repository).expanduser().resolve()
    if not repo.is_dir():
        raise RepositoryError(
            f"model repository {repo} does not exist; export one with `smr export RUN --repository DIR`"
        )
    models: dict[str, str] = {}
    max_batch = {}
    inputs = {}
    batch_bytes = 0
    for config_path in sorted(repo.glob("*/config.pbtxt")):
        config = model_config_pb2.ModelConfig()
        try:
            text_format.Parse(config_path.read_text(), config)
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            raise RepositoryError(f"{config_path} is not a valid Triton model config: {exc}") from exc
        name = config.name or config_path.parent.name
        models[name] = _backend_of(config)
        max_batch[name] = config.max_batch_size
        inputs[name] = tuple(
            (t.name, model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_"), tuple(t.dims))
            for t in config.input
        )
        if models[name] == "python":
            batch = max(config.max_batch_size, 1)
            total = 0
            for tensor in config.input:
                dims = list(tensor.dims)
                if any(d < 0 for d in dims):
                    continue  # variable size: cannot be sized in advance
                total += math.prod(dims) * _DTYPE_BYTES.get(
                    model_config_pb2.DataType.Name(tensor.data_type), 4
                )
            batch_bytes = max(batch_bytes, total * batch)
    if not models:
        raise RepositoryError(f"{repo} holds no model (no */config.pbtxt); export one with `smr export`")
    if model not in models:
        raise RepositoryError(f"{repo} has no model '{model}'; it has: {', '.join(sorted(models))}")
    return RepositoryInfo(
        path=repo,
        models=models,
        max_batch_size=max_batch[model],
        largest_batch_bytes=batch_bytes,
        inputs=inputs[model],
    )


def verify_manifest(repository: str | os.PathLike[str]) -> None:
    """Refuse a repository whose files do not match its ``MANIFEST.json`` (export's check)."""
    repo = Path(repository)
    if not (repo / "MANIFEST.json").is_file():
        raise RepositoryError(
            f"{repo} has no MANIFEST.json, so its files cannot be tied to a training run; export it with "
            "`smr export RUN --repository DIR` (or, for a hand-made repository, skip the check)"
        )
    from smr.export.manifest import ManifestError
    from smr.export.manifest import verify_manifest as check

    try:
        check(repo)
    except ManifestError as exc:
        raise RepositoryError(str(exc)) from exc


def python_backend_shm(info: RepositoryInfo) -> tuple[int, int]:
    """(shm-default-byte-size, shm-growth-byte-size) for the python backend.

    Every python model instance talks to its stub process through one shared-memory region that
    holds the inputs and outputs of the batch being executed. The default (1 MiB) makes the region
    grow in 1 MiB steps while the first full batches arrive (each step a remap); sizing it for two
    full input batches plus 16 MiB of headroom avoids that, and growth steps of one batch keep rare
    overflows to a single remap.
    """
    batch = info.largest_batch_bytes or MIB
    default = math.ceil((2 * batch + 16 * MIB) / MIB) * MIB
    growth = max(math.ceil(batch / MIB), 1) * MIB
    return default, growth


# --------------------------------------------------------------------------------------------
# The process


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True if a server could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


def _child_setup(parent: int | None) -> None:  # runs in the child between fork and exec
    """Private files (umask 077: the python backend's /dev/shm regions become 0600) and, with a
    ``parent`` pid, death with it: PR_SET_PDEATHSIG sends SIGTERM when the thread that started the
    server ends, even on SIGKILL; if the parent is already gone, the child exits before exec."""
    os.umask(0o077)
    if parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died between fork and prctl
        os._exit(1)


def stage_python_environment(target: Path) -> Path:
    """A private Python environment for the embedded server's python backend stubs.

    The stub embeds Python in isolated mode (environment variables such as PYTHONDONTWRITEBYTECODE
    are ignored) and finds its environment through ``python3`` on ``PATH``. This folder is such an
    environment: a ``pyvenv.cfg`` pointing at this Python's installation and a ``.pth`` file that
    turns byte-code writing off before any model is imported (serving leaves the repository as
    exported) and adds this environment's site-packages (numpy, onnxruntime). Returns its ``bin``.
    """
    base = Path(getattr(sys, "_base_executable", sys.executable))
    bindir = target / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python3").symlink_to(base)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (target / "pyvenv.cfg").write_text(
        f"home = {base.parent}\ninclude-system-site-packages = false\n"
        f"version = {sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}\n"
    )
    packages = target / "lib" / f"python{version}" / "site-packages"
    packages.mkdir(parents=True)
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    # one line: site executes lines that start with "import"; no comprehension (its scope cannot
    # see names the line imported)
    line = f"import site, sys; sys.dont_write_bytecode = True; list(map(site.addsitedir, {dirs!r}))\n"
    (packages / "smr_serving.pth").write_text(line)
    return bindir


_RUNNING: weakref.WeakSet[TritonProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


class TritonProcess:
    """A ``tritonserver`` child process serving one model repository.

    Ports left at 0 are chosen free at start (and chosen again if the server loses a race for
    them); ``restart`` keeps the ports of the first start. ``start`` returns once ``model`` answers
    ready; it raises ``TritonStartError`` with the server's own log lines if the server exits or
    does not become ready within ``ready_timeout``. Use as a context manager, or call ``start`` and
    ``stop``. HTTP is served only with ``http=True``; the APIs in ``RESTRICTED_APIS`` need
    ``admin_headers()`` unless ``restrict_apis=False``.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        model: str = ENSEMBLE,
        host: str = LOOPBACK,
        http: bool = False,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        tritonserver: str | os.PathLike[str] | None = None,
        check_manifest: bool = True,
        restrict_apis: bool = True,
        log_verbose: int = 0,
        log_file: str | os.PathLike[str] | None = None,
        ready_timeout: float = 180.0,
        exit_timeout: int = 10,
        server_args: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository).expanduser().resolve()
        self.model = model
        self.host = host
        self.http = http
        self._requested_ports = {"grpc": grpc_port, "metrics": metrics_port}
        if http:
            self._requested_ports["http"] = http_port
        self.ports = dict(self._requested_ports)
        self._tritonserver = tritonserver
        self.check_manifest = check_manifest
        self.restrict_apis = restrict_apis
        self.log_verbose = log_verbose
        self.log_file = Path(log_file).expanduser().resolve() if log_file else None
        self.ready_timeout = ready_timeout
        self.exit_timeout = exit_timeout
        self.server_args = tuple(server_args)
        self.install: TritonInstall | None = None
        self.info: RepositoryInfo | None = None
        self.shm_prefix = ""  # this start's /dev/shm region prefix
        self._process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._env_bin: Path | None = None
        self._admin_key = ""
        self._log_path: Path | None = None
        self._final_log: str | None = None
        self._log_offset = 0
        self._stubs: dict[int, str] = {}  # stub pid -> model instance, as found when ready
        self._grpc_client = None

    # -- endpoints ------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """``host:port`` as ``tritonclient.grpc.InferenceServerClient`` takes it."""
        return f"{self._client_host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str | None:
        """``http://host:port``, or None when HTTP is off (the default)."""
        return f"http://{self._client_host}:{self.ports['http']}" if self.http else None

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['metrics']}/metrics"

    @property
    def _client_host(self) -> str:
        return LOOPBACK if self.host in ("0.0.0.0", "") else self.host

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def admin_key_file(self) -> Path | None:
        """The 0600 file holding this start's secret for the restricted APIs (None when stopped)."""
        return self._workdir / ADMIN_KEY_FILE if self._workdir is not None and self.restrict_apis else None

    def admin_headers(self, protocol: str = "grpc") -> dict[str, str]:
        """Headers that unlock the restricted APIs, for ``"grpc"`` or ``"http"`` requests."""
        if not self.restrict_apis:
            return {}
        if not self._admin_key:
            raise TritonError("the admin key exists only while the server runs")
        key = ADMIN_KEY if protocol == "http" else GRPC_RESTRICTED_PREFIX + ADMIN_KEY
        return {key: self._admin_key}

    # -- lifecycle ------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The ``tritonserver`` command line (ports, region prefix and secret as of this start)."""
        if self.install is None or self.info is None:
            raise TritonError(
                "command() is known only after start() found the server and read the repository"
            )
        shm_default, shm_growth = python_backend_shm(self.info)
        cmd = [
            os.fspath(self.install.executable),
            f"--model-repository={self.repository}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports['grpc']}",
            "--allow-metrics=true",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports['metrics']}",
            "--metrics-config=summary_latencies=true",
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--backend-config=python,shm-default-byte-size={shm_default}",
            f"--backend-config=python,shm-growth-byte-size={shm_growth}",
            # a unique prefix, so that several servers on one machine never share a region and the
            # regions of this start can be found and removed
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.http:
            cmd += [f"--http-address={self.host}", f"--http-port={self.ports['http']}"]
        else:
            cmd.append("--allow-http=false")
        if self.restrict_apis:
            apis = ",".join(RESTRICTED_APIS)
            cmd.append(f"--grpc-restricted-protocol={apis}:{ADMIN_KEY}={self._admin_key}")
            if self.http:
                cmd.append(f"--http-restricted-api={apis}:{ADMIN_KEY}={self._admin_key}")
        if self.install.is_embedded:
            cmd.append(f"--backend-directory={self._workdir / 'backends'}")
        if not has_nvidia_gpu():
            cmd += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
        return cmd + list(self.server_args)

    def environment(self) -> dict[str, str]:
        """The server's environment: bundled libraries and the stubs' private environment first."""
        env = dict(os.environ)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # stubs that read the environment (the embedded one does not)
        if self.install is not None and self.install.library_dirs:
            dirs = [os.fspath(d) for d in self.install.library_dirs]
            if env.get("LD_LIBRARY_PATH"):
                dirs.append(env["LD_LIBRARY_PATH"])
            env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs)
            first = os.fspath(self._env_bin) if self._env_bin else os.path.dirname(sys.executable)
            env["PATH"] = os.pathsep.join([first, env.get("PATH", os.defpath)])
        return env

    def _stage_backend(self) -> None:
        """Copy the wheel's python backend and this Python's stub into the private work folder."""
        assert self.install is not None and self._workdir is not None
        if not self.install.is_embedded:
            return
        target = self._workdir / "backends" / "python"
        shutil.copytree(self.install.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.install.stub, target / STUB_NAME)
        self._env_bin = stage_python_environment(self._workdir / "python")

    def check_repository(self) -> None:
        """Everything ``start`` checks before starting: the binary, the configs, the manifest."""
        self.install = find_tritonserver(self._tritonserver)
        self.info = read_repository(self.repository, self.model)
        if self.install.is_embedded:
            foreign = {name: be for name, be in self.info.models.items() if be not in ("python", "ensemble")}
            if foreign:
                listed = ", ".join(f"{name} ({be})" for name, be in sorted(foreign.items()))
                raise RepositoryError(
                    f"{listed}: the embedded tritonserver from {self.install.source} has the python backend "
                    "only; export with `--runtime python` or `--runtime openvino` (python backend), or run "
                    "a full Triton (docker compose, or --tritonserver / $TRITONSERVER pointing at one)"
                )
        if self.check_manifest:
            verify_manifest(self.repository)

    def start(self) -> TritonProcess:
        if self.is_alive():
            return self
        self.check_repository()
        for path in shm.remove_stale_regions():
            log.info("removed %s, left by a dead SMR server", path)
        self._final_log = None
        self._workdir = Path(tempfile.mkdtemp(prefix="smr-triton-"))  # 0700
        try:
            self._stage_backend()
            self._launch_until_ready(retry_ports=0 in self._requested_ports.values())
            _RUNNING.add(self)
            return self
        except BaseException:
            self.stop()
            raise

    def _launch_until_ready(self, retry_ports: bool, port_wait: float = 0.0) -> None:
        for attempt in range(3):
            self._launch(port_wait)
            try:
                self.wait_ready(self.ready_timeout)
                self._stubs = self.stub_processes()
                return
            except TritonStartError as exc:
                if attempt < 2 and retry_ports and "already in use" in exc.log.lower():
                    self._terminate(force=True)
                    continue  # lost a race for a port: pick new ones
                raise

    def restart(self) -> None:
        """Kill the server (and its stubs) at once, remove its regions, start it again on the same
        ports and wait until it is ready. Raises ``TritonStartError`` like ``start``."""
        if self._workdir is None:
            raise TritonError("restart() needs a started server")
        self._terminate(force=True)
        self._requested_ports = dict(self.ports)  # the same ports as before
        self._launch_until_ready(retry_ports=False, port_wait=10.0)  # the killed server's ports free up
        _RUNNING.add(self)

    def _write_admin_key(self) -> None:
        self._admin_key = secrets.token_urlsafe(32)
        path = self._workdir / ADMIN_KEY_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._admin_key + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    def _launch(self, port_wait: float = 0.0) -> None:
        assert self._workdir is not None
        for name, port in self._requested_ports.items():
            if port and not _wait_port_free(port, self.host, timeout=port_wait):
                raise TritonStartError(
                    f"--{name}-port {port} on {self.host} is already in use (another tritonserver or "
                    "smr serve?); choose another port, or 0 for a free one"
                )
        self.ports = {
            name: port or free_port(self._client_host) for name, port in self._requested_ports.items()
        }
        self.shm_prefix = shm.new_prefix()
        if self.restrict_apis:
            self._write_admin_key()
        self._log_path = self.log_file or self._workdir / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        # PR_SET_PDEATHSIG fires when the *thread* that started the child ends: only from the main
        # thread, or from a thread marked to live as long as its servers (the supervisor's)
        thread = threading.current_thread()
        long_lived = thread is threading.main_thread() or getattr(thread, "owns_servers", False)
        parent = os.getpid() if sys.platform.startswith("linux") and long_lived else None
        with open(self._log_path, "ab") as log_fh:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self._workdir,
                start_new_session=True,  # signals reach it only through us (forwarded by stop())
                preexec_fn=lambda: _child_setup(parent),
            )
        self._stubs = {}
        self._close_client()
        guard = threading.Thread(target=self._guard_regions, args=(self._process,), daemon=True)
        guard.start()

    def _guard_regions(self, process: subprocess.Popen) -> None:
        """Make this start's /dev/shm regions 0600 as soon as they appear, while the server runs.

        The umask alone does not do it: the 2.51 python backend (boost.interprocess) sets its regions
        to 0644 with fchmod after creating them. Regions appear while models load (every 10 ms then)
        and are grown in place later (checked every 0.5 s).
        """
        prefix = self.shm_prefix
        while process.poll() is None:
            for path in shm.regions(prefix):
                try:
                    if path.stat().st_mode & 0o077:
                        path.chmod(0o600)
                except OSError:
                    pass
            time.sleep(0.5 if self._stubs else 0.01)

    # -- talking to the server ------------------------------------------------------------
    def grpc_client(self):
        """A ``tritonclient.grpc.InferenceServerClient`` for this start (kept, closed on stop)."""
        if self._grpc_client is None:
            import tritonclient.grpc as grpcclient

            self._grpc_client = grpcclient.InferenceServerClient(self.grpc_url)
        return self._grpc_client

    def _close_client(self) -> None:
        if self._grpc_client is not None:
            try:
                self._grpc_client.close()
            except Exception:  # noqa: BLE001 - closing a broken channel
                pass
            self._grpc_client = None

    def model_states(self) -> dict[str, tuple[str, str]]:
        """Model name -> (state, reason) from the server's repository index (a restricted API)."""
        from tritonclient.utils import InferenceServerException

        headers = self.admin_headers() if self.restrict_apis else None
        try:
            index = self.grpc_client().get_model_repository_index(headers=headers, as_json=True)
        except InferenceServerException:
            return {}
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in index.get("models", [])}

    def wait_ready(self, timeout: float) -> None:
        """Poll the model's readiness over gRPC; fail fast when the process exits or a model failed."""
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll() if self._process else -1
            if code is not None:
                raise self._start_error(
                    f"tritonserver exited with code {code} before '{self.model}' was ready"
                )
            try:
                if self.grpc_client().is_model_ready(self.model, client_timeout=2):
                    return
                states = self.model_states()
                failed = {n: s for n, s in states.items() if s[0] == "UNAVAILABLE" and s[1]}
                if failed:
                    why = "; ".join(f"{n}: {reason}" for n, (_, reason) in sorted(failed.items()))
                    raise self._start_error(f"models failed to load: {why}")
                if states and self.model not in states:
                    raise self._start_error(
                        f"the server has no model '{self.model}'; it has {sorted(states)}"
                    )
            except InferenceServerException:
                pass  # endpoints come up only after every model loaded
            if time.monotonic() > deadline:
                raise self._start_error(f"'{self.model}' not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def probe(self, timeout: float = 30.0) -> float:
        """One real inference on the served model (a batch of one zero input, every output);
        returns its seconds or raises ``ProbeError``. Triton's readiness alone says nothing about
        dead python stubs: their models keep answering ready while every request fails."""
        if self.info is None or not self.is_alive():
            raise ProbeError("the server is not running")
        return probe_model(
            self.grpc_client(), self.model, self.info.inputs, self.info.max_batch_size > 0, timeout
        )

    def stub_processes(self) -> dict[int, str]:
        """The server's python backend stubs: pid -> model instance name (``smr_backbone_0_0``)."""
        pid = self.pid
        if pid is None:
            return {}
        stubs = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid != pid:
                    continue
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if argv and argv[0].endswith(STUB_NAME.encode()):
                stubs[int(proc.name)] = argv[8].decode() if len(argv) > 8 else "?"
        return stubs

    def dead_stubs(self) -> list[str]:
        """Model instances whose stub, alive when the server became ready, is gone."""
        if not self._stubs:
            return []
        alive = self.stub_processes()
        return sorted(name for pid, name in self._stubs.items() if alive.get(pid) != name)

    def _start_error(self, headline: str) -> TritonStartError:
        if self._log_path is not None and self._log_path.exists():  # this attempt's output only
            text = self._log_path.read_bytes()[self._log_offset :].decode(errors="replace")
        else:
            text = self.log()
        lines = text.splitlines()
        errors = [line for line in lines if _LOG_ERROR_LINE.match(line) and "CudaDriverHelper" not in line]
        source = self.install.source if self.install else "?"
        parts = [f"{headline} (repository {self.repository}, server from {source})"]
        if errors:
            parts += ["server errors:", *("  " + line for line in errors[-15:])]
        parts += ["last lines of the server log:", *("  " + line for line in lines[-25:])]
        if self.log_file:
            parts.append(f"full log: {self.log_file}")
        return TritonStartError("\n".join(parts), text)

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def poll(self) -> int | None:
        """The server's exit code, or None while it runs."""
        return self._process.poll() if self._process else None

    def send_signal(self, sig: int) -> None:
        if self.is_alive():
            self._process.send_signal(sig)

    def _terminate(self, force: bool = False) -> int | None:
        """SIGTERM, then SIGKILL to the server's process group after the grace period (at once with
        ``force`` or when a stub is dead: such a server never finishes a clean shutdown); then its
        shared-memory regions are removed."""
        proc = self._process
        if proc is None:
            return None
        self._close_client()
        if proc.poll() is None and not force and not self.dead_stubs():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.exit_timeout + 15)
            except subprocess.TimeoutExpired:
                pass
        try:  # the server if it is still there, and python backend stubs left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        _wait_group_gone(proc.pid, timeout=10)
        shm.remove_regions(self.shm_prefix)
        return proc.returncode

    def stop(self) -> int | None:
        """Stop the server (clean shutdown first) and remove the work folder; returns the exit code."""
        _RUNNING.discard(self)
        code = self._terminate()
        if self._workdir is not None:
            self._final_log = self.log()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._admin_key = ""
        return code

    def log(self) -> str:
        """Everything the server printed so far (also after ``stop``)."""
        if self._log_path is not None and self._log_path.exists():
            return self._log_path.read_text(errors="replace")
        return self._final_log or ""

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"TritonProcess({str(self.repository)!r}, grpc={self.grpc_url}, {state})"


def probe_model(
    client, model: str, inputs: Sequence[tuple[str, str, Sequence[int]]], batched: bool, timeout: float
) -> float:
    """Send ``model`` one request of zeros (``inputs``: (name, Triton data type, dims) as in its
    config; a batch of one when ``batched``) through ``client`` (tritonclient.grpc); returns the
    seconds it took or raises ``ProbeError``. The request carries the parameter ``smr_probe``."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, triton_to_np_dtype

    if not inputs:
        raise ProbeError(f"'{model}' has no inputs to probe with")
    tensors = []
    for name, datatype, dims in inputs:
        shape = [1, *dims] if batched else list(dims)
        if any(d < 0 for d in shape):
            raise ProbeError(f"'{model}' input {name} has a variable shape {list(dims)}; cannot probe it")
        tensor = grpcclient.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(np.zeros(shape, dtype=triton_to_np_dtype(datatype)))
        tensors.append(tensor)
    start = time.perf_counter()
    try:
        client.infer(model, tensors, client_timeout=timeout, parameters={"smr_probe": True})
    except InferenceServerException as exc:
        status = str(exc.status() or "")
        raise ProbeError(f"probe inference on '{model}' failed: {status}: {exc.message()}", status) from None
    return time.perf_counter() - start


def _wait_port_free(port: int, host: str, timeout: float) -> bool:
    """True once ``host:port`` can be bound (a killed server's port frees within moments)."""
    deadline = time.monotonic() + timeout
    while not port_is_free(port, host):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no process of group ``pgid`` is left (killed stubs take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
