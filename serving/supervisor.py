"""Keep a ``TritonProcess`` serving: detect a broken server within seconds and restart it.

Triton's own readiness says nothing about the python backend's stub processes: when a stub dies,
its model keeps answering ready while every request fails with INTERNAL "Stub process ... is not
healthy", and the stub is never restarted. The supervisor therefore watches three things:

- the server process (it exited);
- the stub processes found when the server became ready (one vanished), every ``check_interval``;
- a real inference on the served model (``TritonProcess.probe``) every ``probe_interval``: a probe
  that reports a dead stub restarts at once, ``failures_to_restart`` failures in a row otherwise.

A broken server is killed with its stubs, its /dev/shm regions removed, and started again on the
same ports; each restart is logged and counted. ``smr serve`` runs ``run()`` in its main thread;
``start_background()`` runs it in a thread that lives as long as the supervisor (tests).

The health endpoint (``health_port``; loopback by default) answers:

- ``/ready``: 200 after a successful real inference (at most 1 s old), else 503 and why;
- ``/live``: 200 while the supervisor runs;
- ``/metrics``: Prometheus metrics of the supervisor (``smr_serve_*``, see docs/serving.md).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from .launcher import LOOPBACK, ProbeError, TritonError, TritonProcess

__all__ = ["RESTART_REASONS", "Supervisor", "SupervisorError"]

log = logging.getLogger(__name__)

RESTART_REASONS = ("server_exited", "stub_died", "probe_failed")


class SupervisorError(TritonError):
    """The server could not be brought back (every restart in a row failed)."""


class Supervisor:
    """Supervise ``server`` (started by ``start``/``start_background`` if it is not running)."""

    def __init__(
        self,
        server: TritonProcess,
        *,
        probe_interval: float = 10.0,
        probe_timeout: float = 60.0,
        check_interval: float = 0.5,
        failures_to_restart: int = 3,
        max_failed_restarts: int = 5,
        health_host: str = LOOPBACK,
        health_port: int | None = None,
    ) -> None:
        for name, value in (("probe_interval", probe_interval), ("probe_timeout", probe_timeout),
                            ("check_interval", check_interval)):  # fmt: skip
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        if failures_to_restart < 1 or max_failed_restarts < 1:
            raise ValueError("failures_to_restart and max_failed_restarts must be >= 1")
        self.server = server
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.check_interval = check_interval
        self.failures_to_restart = failures_to_restart
        self.max_failed_restarts = max_failed_restarts
        self.health_host = health_host
        self.health_port = health_port
        self.restart_count = 0
        self.last_recovery_seconds: float | None = None
        self._stop = threading.Event()
        self._lock = threading.RLock()  # the server is restarted and stopped under it
        self._restarting = False
        self._thread: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._ready_cache: tuple[float, bool, str] = (0.0, False, "not probed yet")

        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "smr_serve_restarts", "tritonserver restarts by smr serve's supervisor, by reason",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        for reason in RESTART_REASONS:
            self.restarts.labels(reason=reason)
        self.failed_restarts = Counter(
            "smr_serve_failed_restarts", "restarts that did not bring the server back", registry=self.registry
        )
        self.up = Gauge(
            "smr_serve_up", "1 while the server passes its checks and probes, else 0", registry=self.registry
        )
        self.probe_seconds = Gauge(
            "smr_serve_probe_seconds", "duration of the last successful probe", registry=self.registry
        )
        self.probe_failures = Counter(
            "smr_serve_probe_failures", "probe inferences that failed", registry=self.registry
        )
        self.recovery_seconds = Gauge(
            "smr_serve_last_recovery_seconds",
            "seconds from detecting the last failure until the server was ready again",
            registry=self.registry,
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Supervisor:
        """Open the health endpoint, then start the server (if needed); ``run`` does the watching."""
        if self.health_port is not None and self._http is None:
            try:
                self._http = ThreadingHTTPServer((self.health_host, self.health_port), _handler(self))
            except OSError as exc:
                raise TritonError(
                    f"--health-port {self.health_port} on {self.health_host}: {exc.strerror}; "
                    "choose another port, or 0 for a free one"
                ) from None
            self._http.daemon_threads = True
            self.health_port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, name="smr-health", daemon=True).start()
        if not self.server.is_alive():
            self.server.start()
        self.up.set(1)
        return self

    @property
    def health_url(self) -> str | None:
        return f"http://{self.health_host}:{self.health_port}" if self._http is not None else None

    def start_background(self) -> Supervisor:
        """``start`` and watch in a thread that owns the server (it dies with this process)."""
        self._stop.clear()
        started = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._background, args=(started, failure), name="smr-supervisor", daemon=True
        )
        self._thread.owns_servers = True  # the launcher ties the server's life to this thread
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def _background(self, started: threading.Event, failure: list[BaseException]) -> None:
        try:
            self.start()  # the server's process is started from this long-lived thread
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)
            started.set()
            return
        started.set()
        try:
            self.run()
        except SupervisorError as exc:
            log.error("%s", exc)

    def stop(self) -> None:
        """Stop watching (``run`` returns) and stop the server and the health endpoint."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.server.exit_timeout + 60)
            self._thread = None
        with self._lock:
            self.server.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> Supervisor:
        return self.start_background()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- watching -----------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        """Watch until ``stop`` (or ``self.stop()``) is set; raises ``SupervisorError`` when
        ``max_failed_restarts`` restarts in a row fail.

        Probes run in their own thread, so that a slow probe (a loaded server answers in seconds)
        never delays the process checks: a dead stub is seen within ``check_interval``."""
        stop = stop or self._stop
        next_probe = time.monotonic() + self.probe_interval
        failures = 0
        prober: tuple[threading.Thread, list] | None = None  # (thread, [seconds or ProbeError])
        while not (stop.is_set() or self._stop.is_set()):
            reason, detail = self._check()
            if reason is None and prober is None and time.monotonic() >= next_probe:
                outcome: list = []
                thread = threading.Thread(
                    target=self._probe_into, args=(outcome,), name="smr-probe", daemon=True
                )
                thread.start()
                prober = (thread, outcome)
            if reason is None and prober is not None and not prober[0].is_alive():
                (result,) = prober[1]
                prober = None
                next_probe = time.monotonic() + self.probe_interval
                if isinstance(result, ProbeError):
                    self.probe_failures.inc()
                    failures += 1
                    log.warning("probe %d/%d failed: %s", failures, self.failures_to_restart, result)
                    if result.stub_died:
                        reason, detail = "stub_died", str(result)
                    elif failures >= self.failures_to_restart:
                        reason, detail = "probe_failed", f"{failures} probes in a row failed; last: {result}"
                else:
                    self.probe_seconds.set(result)
                    failures = 0
                    self.up.set(1)
            if reason is not None and not (stop.is_set() or self._stop.is_set()):
                prober = None  # a probe of the broken server: its outcome no longer matters
                self.recover(reason, detail)
                failures = 0
                next_probe = time.monotonic() + self.probe_interval
            stop.wait(self.check_interval)

    def _probe_into(self, outcome: list) -> None:
        try:
            outcome.append(self.server.probe(self.probe_timeout))
        except ProbeError as exc:
            outcome.append(exc)
        except Exception as exc:  # noqa: BLE001 - a probe racing a restart (closed channel, ...)
            outcome.append(ProbeError(f"probe inference failed: {type(exc).__name__}: {exc}"))

    def _check(self) -> tuple[str | None, str]:
        """Cheap checks without a request: the server process, and its stubs (read from /proc)."""
        code = self.server.poll()
        if code is not None:
            return "server_exited", f"tritonserver exited with code {code}"
        dead = self.server.dead_stubs()
        if dead:
            return "stub_died", f"python backend stub of {', '.join(dead)} died"
        return None, ""

    def recover(self, reason: str, detail: str) -> None:
        """Restart the server (same ports, regions removed); retried with back-off until
        ``max_failed_restarts`` attempts in a row failed (then ``SupervisorError``)."""
        self.up.set(0)
        self._ready_cache = (0.0, False, detail)
        detected = time.monotonic()
        log.warning("tritonserver is broken (%s: %s); restarting it on the same ports", reason, detail)
        for attempt in range(1, self.max_failed_restarts + 1):
            try:
                with self._lock:
                    self._restarting = True
                    try:
                        self.server.restart()
                    finally:
                        self._restarting = False
            except TritonError as exc:
                self.failed_restarts.inc()
                log.error("restart %d/%d failed: %s", attempt, self.max_failed_restarts, exc)
                if attempt == self.max_failed_restarts or self._stop.wait(min(2.0**attempt, 30.0)):
                    if attempt == self.max_failed_restarts:
                        raise SupervisorError(
                            f"tritonserver could not be restarted ({attempt} attempts); last error: {exc}"
                        ) from None
                    return
                continue
            self.restart_count += 1
            self.restarts.labels(reason=reason).inc()
            self.last_recovery_seconds = time.monotonic() - detected
            self.recovery_seconds.set(self.last_recovery_seconds)
            self.up.set(1)
            log.warning(
                "tritonserver restarted (restart #%d, reason %s) in %.1f s; pid %s, gRPC %s",
                self.restart_count, reason, self.last_recovery_seconds, self.server.pid, self.server.grpc_url,
            )  # fmt: skip
            return

    # -- readiness ----------------------------------------------------------------------------
    def ready(self, max_age: float = 1.0) -> tuple[bool, str]:
        """(ready, detail): a real inference succeeded at most ``max_age`` seconds ago, or now."""
        stamp, ok, detail = self._ready_cache
        if time.monotonic() - stamp <= max_age:
            return ok, detail
        reason, detail = self._check()
        if self._restarting:
            ok, detail = False, "tritonserver is being restarted"
        elif reason is not None:
            ok = False
        else:
            try:
                seconds = self.server.probe(self.probe_timeout)
                ok, detail = True, f"probe inference on '{self.server.model}' took {seconds * 1000:.0f} ms"
            except ProbeError as exc:
                ok, detail = False, str(exc)
            except Exception as exc:  # noqa: BLE001 - a probe racing a restart
                ok, detail = False, f"probe inference failed: {type(exc).__name__}: {exc}"
        self._ready_cache = (time.monotonic(), ok, detail)
        return ok, detail


def _handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a connection may stay silent (no slow-loris)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/ready":
                ok, detail = supervisor.ready()
                self._send(200 if ok else 503, {"ready": ok, "detail": detail,
                                                "restarts": supervisor.restart_count})  # fmt: skip
            elif path == "/live":
                self._send(200, {"live": True, "restarts": supervisor.restart_count})
            elif path == "/metrics":
                body = generate_latest(supervisor.registry)
                self._reply(200, CONTENT_TYPE_LATEST, body)
            else:
                self._send(404, {"error": f"no {path}; try /ready, /live or /metrics"})

        def _send(self, code: int, doc: dict) -> None:
            self._reply(code, "application/json", json.dumps(doc).encode())

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # no access log on stderr
            pass

    return Handler
