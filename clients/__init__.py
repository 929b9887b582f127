"""SMR clients: the gRPC client library, ``smr classify``, whole-slide scoring and its report.

Everything a slide-scanning pipeline or a lab user touches. The library learns the class list, the
lineages (with their stage targets and boundaries) and the image size from the server, so a client
needs nothing but the server's address::

    from smr.clients import SMRClient

    with SMRClient("127.0.0.1:8001") as client:
        cells = client.classify(images)          # uint8 RGB arrays, any count
        cells[0].class_name, cells[0].stage_estimate, cells[0].borderline

Modules are imported lazily so that ``smr --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SMRClient": "client",
    "AsyncSMRClient": "aio",
    "CellResult": "results",
    "LineagePosition": "results",
    "ModelInfo": "model_info",
    "LineageInfo": "model_info",
    "SMRClientError": "errors",
    "ServerUnavailableError": "errors",
    "InputError": "errors",
    "score_slide": "scoring",
    "SlideScore": "scoring",
    "differential_count": "summary",
    "DifferentialCount": "summary",
    "proportion_interval": "summary",
    "recount": "recount",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
