"""The append-only journal that makes slide scoring resumable.

Each finished batch is appended to ``scoring-journal.csv`` (detection id, class id, probabilities,
per-lineage position and distance: the server's raw outputs) and flushed to disk before the next
batch is recorded. A run that is killed loses at most the batches in flight; run again, it skips
every id already in the journal. A line cut short by a kill is dropped when the journal is
reopened. ``scoring-journal.json`` records what the rows mean (model classes and lineages, slide,
detections, patch geometry); a journal written for something else is refused, not mixed in.

Given the slide's path (``Journal.open(..., slide=PATH)``), the journal also keys the slide by the
SHA-256 of its content, not only by its name, size and dimensions: a different slide saved under
the same name is refused. The hash is computed once, streamed (slides are gigabytes), and cached
beside the journal in ``scoring-journal.slide.json`` with the file's size, modification time and
inode, so that resuming a run does not read the slide twice.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .errors import InputError
from .model_info import ModelInfo
from .results import BatchOutputs

__all__ = ["Journal", "JOURNAL_CSV", "JOURNAL_META", "JOURNAL_LOCK", "SLIDE_HASH_CACHE", "slide_sha256"]

JOURNAL_CSV = "scoring-journal.csv"
JOURNAL_META = "scoring-journal.json"
JOURNAL_LOCK = "scoring-journal.lock"
SLIDE_HASH_CACHE = "scoring-journal.slide.json"
_CHUNK = 1 << 20
SCHEMA = "smr.scoring-journal"
VERSION = 1


def _fields(info: ModelInfo) -> list[str]:
    return (
        ["id", "class_id"]
        + [f"p:{c}" for c in info.classes]
        + [f"t:{lin.name}" for lin in info.lineages]
        + [f"d:{lin.name}" for lin in info.lineages]
    )


def slide_sha256(path: str | Path, cache: str | Path | None = None) -> str:
    """SHA-256 of the file at ``path``, streamed in 1 MiB chunks.

    With ``cache`` (a JSON file), a hash recorded there for the same file (absolute path, size,
    modification time in ns, inode) is reused, and a new one is recorded.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    if cache is not None:
        try:
            stored = json.loads(Path(cache).read_text(encoding="utf-8"))
            if isinstance(stored, dict) and {k: stored.get(k) for k in key} == key:
                digest = stored.get("sha256")
                if isinstance(digest, str) and len(digest) == 64:
                    return digest
        except (OSError, ValueError):
            pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    if cache is not None:
        atomic_write_text(Path(cache), json.dumps({**key, "sha256": digest.hexdigest()}, indent=2) + "\n")
    return digest.hexdigest()


# meta keys that do not change what the stored outputs mean: a resumed run may differ in them
_NOT_COMPARED = {"review_margin"}


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(stored) | set(current))
    out = []
    for k in keys:
        a, b = stored.get(k), current.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_differences(a, b, f"{prefix}{k}."))
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


class Journal:
    """Raw outputs of the cells scored so far, keyed by detection id."""

    def __init__(
        self, directory: Path, info: ModelInfo, rows: dict[str, list[str]], lock_fd: int | None = None
    ) -> None:
        self.directory = directory
        self.info = info
        self.fields = _fields(info)
        self._rows = rows
        self._lock_fd = lock_fd

    def close(self) -> None:
        """Release the folder for other runs (a killed process releases it too)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _lock(directory: Path) -> int:
        fd = os.open(directory / JOURNAL_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(
                f"{directory} is being written by another scoring run (it holds {JOURNAL_LOCK}); "
                "wait for it to finish or use another output folder"
            ) from None
        return fd

    @property
    def csv_path(self) -> Path:
        return self.directory / JOURNAL_CSV

    @property
    def meta_path(self) -> Path:
        return self.directory / JOURNAL_META

    @classmethod
    def open(
        cls,
        directory: str | Path,
        info: ModelInfo,
        run: Mapping[str, Any],
        *,
        restart: bool = False,
        slide: str | Path | None = None,
    ) -> Journal:
        """Open (or start) the journal in ``directory`` for the run described by ``run`` (JSON-able).

        ``slide``: the slide file; its content's SHA-256 becomes part of the run (``run["slide"]
        ["sha256"]``), so a journal of another slide with the same name is refused. The journal
        locks the folder until :meth:`close`: two runs never write one journal.
        """
        directory = Path(directory)
        lock_fd = cls._lock(directory)
        try:
            if slide is not None:
                run = json.loads(json.dumps(run))
                run.setdefault("slide", {})["sha256"] = slide_sha256(slide, directory / SLIDE_HASH_CACHE)
            return cls._open(directory, info, run, restart, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open(
        cls, directory: Path, info: ModelInfo, run: Mapping[str, Any], restart: bool, lock_fd: int
    ) -> Journal:
        csv_path, meta_path = directory / JOURNAL_CSV, directory / JOURNAL_META
        meta = {
            "schema": SCHEMA,
            "version": VERSION,
            "model": info.signature(),
            "run": json.loads(json.dumps(run)),
            # the served flags' margin, for smr recount (not a reason to refuse resuming)
            "review_margin": info.review_margin,
        }
        if restart:
            csv_path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
        if meta_path.exists():
            try:
                stored = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{meta_path}: unreadable ({exc}); pass --restart to start over") from None
            if stored.get("schema") != SCHEMA or stored.get("version") != VERSION:
                raise InputError(
                    f"{meta_path}: not an SMR scoring journal of version {VERSION}; pass --restart"
                )
            changed = [c for c in _differences(stored, meta) if c not in _NOT_COMPARED]
            if changed:
                raise InputError(
                    f"{directory} holds results of a different scoring run (changed: {', '.join(changed)}); "
                    "use another output folder, or pass --restart to discard them"
                )
        elif csv_path.exists():
            raise InputError(f"{csv_path} exists without {JOURNAL_META}; pass --restart to start over")
        else:
            atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
        fields = _fields(info)
        rows = cls._read_rows(csv_path, fields) if csv_path.exists() else {}
        if not csv_path.exists():
            with open(csv_path, "w", encoding="utf-8", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(fields)
                f.flush()
                os.fsync(f.fileno())
        return cls(directory, info, rows, lock_fd)

    @staticmethod
    def _read_rows(path: Path, fields: list[str]) -> dict[str, list[str]]:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the last line was cut short by a kill: drop it for good
            with open(path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        header = next(reader, None)
        if header is None:  # killed before the header reached the disk
            with open(path, "w", encoding="utf-8", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(fields)
            return {}
        if header != fields:
            raise InputError(
                f"{path}: columns do not match the model's outputs; pass --restart to start over"
            )
        rows: dict[str, list[str]] = {}
        for line, row in enumerate(reader, start=2):
            if len(row) != len(fields):
                raise InputError(
                    f"{path}, line {line}: damaged ({len(row)} fields); pass --restart to start over"
                )
            rows.setdefault(row[0], row)
        return rows

    def __contains__(self, detection_id: str) -> bool:
        return detection_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, ids: Sequence[str], outputs: BatchOutputs) -> None:
        """Record a finished batch and force it to disk."""
        if len(ids) != len(outputs):
            raise ValueError(f"{len(ids)} ids for {len(outputs)} results")
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        new = {}
        for i, det_id in enumerate(ids):
            values = np.concatenate([outputs.probabilities[i], outputs.maturity[i], outputs.distance[i]])
            row = [det_id, str(int(outputs.class_id[i]))] + [f"{float(v):.9g}" for v in values]
            writer.writerow(row)
            new[det_id] = row
        with open(self.csv_path, "a", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        for det_id, row in new.items():
            self._rows.setdefault(det_id, row)

    def outputs(self, ids: Sequence[str]) -> BatchOutputs:
        """The recorded outputs of ``ids`` (all must be in the journal), in that order."""
        n_c, n_l = len(self.info.classes), len(self.info.lineages)
        if not ids:
            return BatchOutputs(
                np.zeros((0, n_c), np.float32),
                np.zeros(0, np.int64),
                np.zeros((0, n_l), np.float32),
                np.zeros((0, n_l), np.float32),
            )
        rows = [self._rows[i] for i in ids]
        values = np.array([[float(v) for v in r[2:]] for r in rows], dtype=np.float32)
        return BatchOutputs(
            probabilities=values[:, :n_c],
            class_id=np.array([int(r[1]) for r in rows], dtype=np.int64),
            maturity=values[:, n_c : n_c + n_l],
            distance=values[:, n_c + n_l :],
        )
