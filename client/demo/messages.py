"""Errors a person can act on, in plain words; never a stack trace."""

from __future__ import annotations

from client.errors import ClientError, ServerError


class StepOrderError(RuntimeError):
    """A step was asked for before the step it needs (encrypt before keys, and so on)."""


def explain(error: Exception, server_url: str) -> str:
    """What went wrong and what to do about it, for a person reading the demo page."""
    if isinstance(error, ServerError):
        if error.code == "unreachable":
            return (
                f"The FHE server at {server_url} cannot be reached. Is `fhe-server` running? "
                "Start it with `fhe-server serve --dev` (or with API tokens), then try again."
            )
        if error.code == "busy":
            wait = f" in {error.retry_after:g} s" if error.retry_after else " in a few seconds"
            return (
                "The server is busy with other encrypted predictions (its queue is full). "
                f"Try again{wait}."
            )
        if error.code == "unauthorized":
            return (
                f"The FHE server at {server_url} needs an API token: start the demo with "
                "FHE_API_TOKEN set to a token its operator gave you."
            )
        if error.code == "unknown_model":
            return f"The server has no such model. {error.message}"
        if error.code == "model_unloadable":
            return f"The server cannot load this model: {error.message}"
        return f"The server refused the request: {error.message} (HTTP {error.status})"
    if isinstance(error, (ClientError, StepOrderError)):
        return str(error)
    return f"Unexpected error ({type(error).__name__}): {error}"
