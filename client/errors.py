"""The client's errors, under one base class, so that a caller (the CLI) catches one type."""

from __future__ import annotations

from fhe.embedding.weights import EmbeddingModelMismatch


class ClientError(RuntimeError):
    """An error the client reports to its user: a problem to fix on this side, or a subclass."""


class ServerError(ClientError):
    """The server answered with an error (or could not be reached)."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no answer"
        return f"{self.message} ({where})"


class UnknownKey(ServerError):
    """The server does not hold (or has evicted) the evaluation key: upload it again."""


class JobFailed(ClientError):
    """The server ran the job and it failed; the message is the server's."""


class EmbedderMismatch(ClientError, EmbeddingModelMismatch):
    """The local embedding weights differ from the ones the model bundle was trained with."""
