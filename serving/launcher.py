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
stopped with SIGTERM (SIGKILL after a grace period). See docs/serving.md for every setting.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ENSEMBLE = "smr"
LOOPBACK = "127.0.0.1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
MIB = 1 << 20

_DTYPE_BYTES = {
    "TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_UINT16": 2, "TYPE_INT16": 2,
    "TYPE_FP16": 2, "TYPE_BF16": 2, "TYPE_UINT32": 4, "TYPE_INT32": 4, "TYPE_FP32": 4,
    "TYPE_UINT64": 8, "TYPE_INT64": 8, "TYPE_FP64": 8,
}  # fmt: skip
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
        path=repo, models=models, max_batch_size=max_batch[model], largest_batch_bytes=batch_bytes
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphaned servers if the parent is killed
    except (OSError, AttributeError):
        pass


_RUNNING: weakref.WeakSet[TritonProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


class TritonProcess:
    """A ``tritonserver`` child process serving one model repository.

    Ports left at 0 are chosen free at start (and chosen again if the server loses a race for
    them). ``start`` returns once ``model`` answers ready; it raises ``TritonStartError`` with the
    server's own log lines if the server exits or does not become ready within ``ready_timeout``.
    Use as a context manager, or call ``start`` and ``stop``.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        model: str = ENSEMBLE,
        host: str = LOOPBACK,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        tritonserver: str | os.PathLike[str] | None = None,
        check_manifest: bool = True,
        log_verbose: int = 0,
        log_file: str | os.PathLike[str] | None = None,
        ready_timeout: float = 180.0,
        exit_timeout: int = 10,
        server_args: Sequence[str] = (),
    ) -> None:
        self.repository = Path(repository).expanduser().resolve()
        self.model = model
        self.host = host
        self._requested_ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.ports = dict(self._requested_ports)
        self._tritonserver = tritonserver
        self.check_manifest = check_manifest
        self.log_verbose = log_verbose
        self.log_file = Path(log_file).expanduser().resolve() if log_file else None
        self.ready_timeout = ready_timeout
        self.exit_timeout = exit_timeout
        self.server_args = tuple(server_args)
        self.install: TritonInstall | None = None
        self.info: RepositoryInfo | None = None
        self._process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._final_log: str | None = None
        self._log_offset = 0

    # -- endpoints ------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """``host:port`` as ``tritonclient.grpc.InferenceServerClient`` takes it."""
        return f"{self._client_host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['metrics']}/metrics"

    @property
    def _client_host(self) -> str:
        return LOOPBACK if self.host in ("0.0.0.0", "") else self.host

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # -- lifecycle ------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The ``tritonserver`` command line (ports as resolved by ``start``)."""
        if self.install is None or self.info is None:
            raise TritonError(
                "command() is known only after start() found the server and read the repository"
            )
        shm_default, shm_growth = python_backend_shm(self.info)
        cmd = [
            os.fspath(self.install.executable),
            f"--model-repository={self.repository}",
            f"--http-address={self.host}",
            f"--http-port={self.ports['http']}",
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
            # a unique prefix, so that several servers on one machine never share a region
            f"--backend-config=python,shm-region-prefix-name=smr{os.getpid()}_{secrets.token_hex(3)}_",
        ]
        if self.install.is_embedded:
            cmd.append(f"--backend-directory={self._workdir / 'backends'}")
        if not has_nvidia_gpu():
            cmd += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
        return cmd + list(self.server_args)

    def environment(self) -> dict[str, str]:
        """The server's environment: bundled libraries and this Python's environment first."""
        env = dict(os.environ)
        if self.install is not None and self.install.library_dirs:
            dirs = [os.fspath(d) for d in self.install.library_dirs]
            if env.get("LD_LIBRARY_PATH"):
                dirs.append(env["LD_LIBRARY_PATH"])
            env["LD_LIBRARY_PATH"] = os.pathsep.join(dirs)
            env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        return env

    def _stage_backend(self) -> None:
        """Copy the wheel's python backend and this Python's stub into the private work folder."""
        assert self.install is not None and self._workdir is not None
        if not self.install.is_embedded:
            return
        target = self._workdir / "backends" / "python"
        shutil.copytree(self.install.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.install.stub, target / "triton_python_backend_stub")

    def start(self) -> TritonProcess:
        if self.is_alive():
            return self
        self.install = find_tritonserver(self._tritonserver)
        self.info = read_repository(self.repository, self.model)
        if self.install.is_embedded:
            foreign = {name: be for name, be in self.info.models.items() if be not in ("python", "ensemble")}
            if foreign:
                listed = ", ".join(f"{name} ({be})" for name, be in sorted(foreign.items()))
                raise RepositoryError(
                    f"{listed}: the embedded tritonserver from {self.install.source} has the python backend "
                    "only; export with `--runtime python`, or run a full Triton (docker compose, or "
                    "--tritonserver / $TRITONSERVER pointing at one)"
                )
        if self.check_manifest:
            verify_manifest(self.repository)
        self._final_log = None
        self._workdir = Path(tempfile.mkdtemp(prefix="smr-triton-"))
        try:
            self._stage_backend()
            for attempt in range(3):
                self._launch()
                try:
                    self.wait_ready(self.ready_timeout)
                    _RUNNING.add(self)
                    return self
                except TritonStartError as exc:
                    auto_ports = 0 in self._requested_ports.values()
                    if attempt < 2 and auto_ports and "already in use" in exc.log.lower():
                        self._terminate()
                        continue  # lost a race for a port: pick new ones
                    raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        assert self._workdir is not None
        for name, port in self._requested_ports.items():
            if port and not port_is_free(port, self.host):
                raise TritonStartError(
                    f"--{name}-port {port} on {self.host} is already in use (another tritonserver or "
                    "smr serve?); choose another port, or 0 for a free one"
                )
        self.ports = {
            name: port or free_port(self._client_host) for name, port in self._requested_ports.items()
        }
        self._log_path = self.log_file or self._workdir / "tritonserver.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        # PR_SET_PDEATHSIG fires when the *thread* that started the child ends: only from the main thread
        die_with_parent = (
            sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
        )
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self._workdir,
                start_new_session=True,  # signals reach it only through us (forwarded by stop())
                preexec_fn=_die_with_parent if die_with_parent else None,
            )

    def _get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.http_url + path, method=method, data=b"{}" if method == "POST" else None
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def model_states(self) -> dict[str, tuple[str, str]]:
        """Model name -> (state, reason) from the server's repository index."""
        status, body = self._get("/v2/repository/index", method="POST")
        if status != 200:
            return {}
        return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in json.loads(body)}

    def wait_ready(self, timeout: float) -> None:
        """Poll ``/v2/models/<model>/ready``; fail fast when the process exits or the model failed."""
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll() if self._process else -1
            if code is not None:
                raise self._start_error(
                    f"tritonserver exited with code {code} before '{self.model}' was ready"
                )
            try:
                status, _ = self._get(f"/v2/models/{self.model}/ready")
                if status == 200:
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
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass  # endpoints come up only after every model loaded
            if time.monotonic() > deadline:
                raise self._start_error(f"'{self.model}' not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def _start_error(self, headline: str) -> TritonStartError:
        if self._log_path is not None and self._log_path.exists():  # this attempt's output only
            log = self._log_path.read_bytes()[self._log_offset :].decode(errors="replace")
        else:
            log = self.log()
        lines = log.splitlines()
        errors = [line for line in lines if _LOG_ERROR_LINE.match(line) and "CudaDriverHelper" not in line]
        source = self.install.source if self.install else "?"
        parts = [f"{headline} (repository {self.repository}, server from {source})"]
        if errors:
            parts += ["server errors:", *("  " + line for line in errors[-15:])]
        parts += ["last lines of the server log:", *("  " + line for line in lines[-25:])]
        if self.log_file:
            parts.append(f"full log: {self.log_file}")
        return TritonStartError("\n".join(parts), log)

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def poll(self) -> int | None:
        """The server's exit code, or None while it runs."""
        return self._process.poll() if self._process else None

    def send_signal(self, sig: int) -> None:
        if self.is_alive():
            self._process.send_signal(sig)

    def _terminate(self) -> int | None:
        """SIGTERM, then SIGKILL to the server's process group after the grace period."""
        proc = self._process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.exit_timeout + 15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        else:
            try:  # python backend stubs left behind by a crashed server
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return proc.returncode

    def stop(self) -> int | None:
        """Stop the server (clean shutdown first) and remove the work folder; returns the exit code."""
        _RUNNING.discard(self)
        code = self._terminate()
        if self._workdir is not None:
            self._final_log = self.log()
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
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
