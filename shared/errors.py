"""Errors that carry the HTTP status Ollama would answer with.

Every layer raises these; the gateway turns them into `{"error": "..."}` with the status.
"""

from __future__ import annotations


class CorralError(Exception):
    """An error with a message meant for the API caller and an HTTP status."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(CorralError):
    status = 400


class NotFound(CorralError):
    status = 404


class Forbidden(CorralError):
    """The caller's API key may not do this (a model it may not use, an admin-only action)."""

    status = 403


class PayloadTooLarge(CorralError):
    status = 413


class ServerBusy(CorralError):
    status = 503


class RunnerError(CorralError):
    """The runner process failed or died while serving a request."""

    status = 500


class RunnerCrashed(RunnerError):
    """A runner crashed while loading in every configuration tried: unloading other models
    would not help."""


class ConfigError(ValueError):
    """A malformed environment variable; `serve` stops with this message."""
