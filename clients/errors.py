"""Errors of the SMR client library; each message names the problem and how to fix it."""

from __future__ import annotations


class SMRClientError(Exception):
    """Base class of every error the SMR client raises on purpose."""


class ServerUnavailableError(SMRClientError):
    """The server did not answer (gRPC UNAVAILABLE or a deadline) after all retries."""


class ServerRequestError(SMRClientError):
    """The server answered with an error that retrying will not fix (e.g. INVALID_ARGUMENT)."""


class ModelConfigError(SMRClientError):
    """The served model's configuration lacks what SMR needs (classes, lineages, image size)."""


class InputError(SMRClientError, ValueError):
    """An input (image, slide, detection file, option) is unusable."""
