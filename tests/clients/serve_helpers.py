"""Helpers of the scale-out tests: `smr serve` as a subprocess (start on a free or given gRPC port,
stop, kill) and a client factory that kills its Ray worker once."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SMR = str(Path(sys.executable).parent / "smr")


class ServeProcess:
    """One real `smr serve` (supervisor + tritonserver) on loopback; ``port`` 0: a free one."""

    def __init__(self, repository: Path, port: int = 0, ready_timeout: float = 300) -> None:
        self.repository, self.port, self.ready_timeout = repository, port, ready_timeout
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> ServeProcess:
        cmd = [SMR, "serve", "--repository", str(self.repository), "--grpc-port", str(self.port),
               "--metrics-port", "0", "--health-port", "0", "--quiet"]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        deadline = time.monotonic() + self.ready_timeout
        banner = []
        while not any(line.startswith("Ctrl+C") for line in banner):
            line = self.process.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.kill()
                pytest.fail("smr serve did not start:\n" + "".join(banner))
            banner.append(line)
        self.url = re.search(r"gRPC\s+(\S+)", "".join(banner)).group(1)
        self.port = int(self.url.rpartition(":")[2])  # a restart reuses it
        self.log = banner
        self._reader = threading.Thread(target=lambda: self.log.extend(self.process.stdout), daemon=True)
        self._reader.start()
        return self

    def _reap(self) -> None:
        self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.process.stdout.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM: `smr serve` stops tritonserver (in-flight requests finish) and exits."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
            self._reap()

    def kill(self) -> None:
        """SIGKILL of `smr serve` and everything it started (a crash, a lost node)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class CrashOnceClient:
    """A picklable client factory for Ray tasks whose client kills its own worker process (SIGKILL)
    once, after ``after`` answered batches; ``marker`` (created just before) makes it once per test."""

    url: str
    marker: Path
    after: int
    kwargs: dict = field(default_factory=dict)

    def __call__(self):
        from smr.clients.client import SMRClient

        client = SMRClient(self.url, **self.kwargs)
        if self.marker.exists():
            return client
        answered = itertools.count(1)
        infer = client.infer

        def infer_then_die(batch):
            outputs = infer(batch)
            if next(answered) > self.after and not self.marker.exists():
                self.marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)  # the answer is lost with the worker
            return outputs

        client.infer = infer_then_die
        return client
