"""The python models' filter of the DLPack capsule traceback that Triton 2.51's stub prints under numpy 2."""

from __future__ import annotations

import gc
import sys

import fake_triton_utils as fake
import pytest

CAPSULE_NOISE = "PyCapsule_GetPointer called with incorrect name"


class _RaisesOnDelete:
    """Raises from ``__del__``: CPython reports that through ``sys.unraisablehook``, as it does for
    numpy's DLPack capsule destructor."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __del__(self) -> None:
        raise self.exc


def _drop(exc: BaseException) -> None:
    _RaisesOnDelete(exc)
    gc.collect()


@pytest.mark.parametrize("model", ["smr_backbone", "smr_postprocess"])
def test_only_the_capsule_message_is_dropped(model, repo224_python, monkeypatch):
    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_value))
    fake.load_model(repo224_python, model)
    fake.load_model(repo224_python, model)  # a second instance in the same process wraps only once

    _drop(ValueError(CAPSULE_NOISE))
    assert seen == []
    others = [ValueError(CAPSULE_NOISE + " (other)"), RuntimeError(CAPSULE_NOISE), ValueError("boom")]
    for exc in others:
        _drop(exc)
    assert seen == others
