"""The texts of Triton's error messages that SMR acts on, in one place.

Triton reports some conditions only in an error message's text, not in its gRPC status:

- a dead python backend stub: INTERNAL "Failed to process the request(s) for model '...', message:
  Stub process '...' is not healthy." -- the server never replaces the stub by itself;
- an unloaded model: NOT_FOUND "Request for unknown model: '...' is not found" -- a wrong model name,
  or a server that is shutting down (its models are unloaded before its port closes).

:mod:`smr.serving.launcher` (is a failed probe a dead stub?) and :mod:`smr.clients.retry` (is a
failed request worth retrying?) both test for them here. Pure Python without imports, so that the
clients do not load the launcher and the launcher does not load the client library.
"""

from __future__ import annotations

__all__ = ["NOT_HEALTHY", "STUB_PROCESS", "UNKNOWN_MODEL", "is_stub_unhealthy", "is_unknown_model"]

STUB_PROCESS = "Stub process"  # ... '<model instance>' is not healthy.
NOT_HEALTHY = "not healthy"
UNKNOWN_MODEL = "unknown model"  # Request for unknown model: '<model>' is not found


def is_stub_unhealthy(message: str) -> bool:
    """True for the python backend's "Stub process '...' is not healthy." (the stub died)."""
    return STUB_PROCESS in message and NOT_HEALTHY in message


def is_unknown_model(message: str) -> bool:
    """True for "Request for unknown model ..." (the model is not loaded on that server)."""
    return UNKNOWN_MODEL in message
