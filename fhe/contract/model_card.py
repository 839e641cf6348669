"""The model card as the API serves it (`GET /v1/models/{name}`) and clients read it: one typed
object on both sides, so a field the server renames fails in the tests, not in a user's run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from fhe.contract.bundle import BundleMetadata


class ModelSummary(BaseModel):
    """One row of the model listing (`GET /v1/models`)."""

    name: str
    kind: Literal["fhe", "clear"]
    task: str | None = None
    input: str | None = None
    labels: list[str] = []
    columns: list[str] | None = None
    origin: dict[str, Any] | None = None
    status: Literal["ready", "unloadable"]
    reason: str | None = None

    @property
    def ready(self) -> bool:
        """Whether the model serves predictions."""
        return self.status == "ready"


class FheModelCard(ModelSummary):
    """An encrypted model's card: its listing row, model.json and the card text for people."""

    kind: Literal["fhe"] = "fhe"
    client_spec_sha256: str | None = None
    metadata: BundleMetadata | None = None
    card: str | None = None
