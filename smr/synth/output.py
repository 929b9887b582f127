"""Output folders that appear complete or not at all, and never overwrite by accident."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["check_target", "staged_folder"]


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another OUT")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} is not empty; choose a new folder or pass --overwrite to replace it "
            "(the old folder is kept until the new output is complete)"
        )


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A hidden sibling folder to write into; on success it replaces ``out``, on error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        # mkdtemp makes a private (0700) folder; give the result the usual permissions.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
