"""The /dev/shm regions of SMR's Triton servers: naming, removal, and the stale ones of dead servers.

Every python model instance exchanges tensors with its stub process through one POSIX shared
memory region, named ``<prefix><uuid>`` where the launcher chooses the prefix
(``--backend-config=python,shm-region-prefix-name``). SMR's prefix is ``smr<pid>_<token>_``: the
pid of the process that launched the server and a random token per start. A server that crashes
or is killed leaves its regions behind (35 MiB each at 224 px); the launcher removes its own after
every stop and, at start, the regions of SMR servers that are dead: the launcher's pid is gone and
no process on the machine has the region mapped. Regions of live servers, SMR's or anyone else's,
are never touched.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

__all__ = [
    "SHM_DIR",
    "new_prefix",
    "regions",
    "remove_regions",
    "stale_regions",
    "remove_stale_regions",
]

SHM_DIR = Path("/dev/shm")
_PREFIX = re.compile(r"^smr(\d+)_([0-9a-f]{6})_")
log = logging.getLogger(__name__)


def new_prefix() -> str:
    """A region prefix for one server start: ``smr<launcher pid>_<6 hex digits>_``."""
    return f"smr{os.getpid()}_{secrets.token_hex(3)}_"


def regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """The regions whose name starts with ``prefix``."""
    if not prefix or not shm_dir.is_dir():
        return []
    return sorted(p for p in shm_dir.iterdir() if p.name.startswith(prefix))


def remove_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove the regions of one server (``prefix`` as given to it); returns what was removed."""
    removed = []
    for path in regions(prefix, shm_dir):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove shared-memory region %s: %s", path, exc)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _mapped_names(shm_dir: Path) -> set[str]:
    """Names of /dev/shm files that some process this user may inspect has mapped or open."""
    names: set[str] = set()
    marker = str(shm_dir) + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            with open(proc / "maps", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    at = line.find(marker)
                    if at >= 0:
                        names.add(line[at + len(marker) :].split()[0])
        except OSError:
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(marker):
                    names.add(target[len(marker) :].split()[0])
        except OSError:
            continue
    return names


def stale_regions(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Regions of SMR servers that are dead: SMR's name, launcher pid gone, mapped by no process."""
    candidates = []
    if not shm_dir.is_dir():
        return []
    for path in shm_dir.iterdir():
        match = _PREFIX.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            candidates.append(path)
    if not candidates:
        return []
    in_use = _mapped_names(shm_dir)
    return sorted(p for p in candidates if p.name not in in_use)


def remove_stale_regions(shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove ``stale_regions``; returns what was removed (each logged)."""
    removed = []
    for path in stale_regions(shm_dir):
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:  # another user's region (/dev/shm is sticky)
            log.warning("could not remove stale shared-memory region %s: %s", path, exc)
            continue
        log.info("removed stale shared-memory region %s (%.1f MiB) of a dead SMR server", path, size / 2**20)
        removed.append(path)
    return removed
