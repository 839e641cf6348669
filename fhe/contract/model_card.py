"""The model card as the API serves it (`GET /v1/models/{name}`) and clients read it: one typed
object on both sides, so a field the server renames fails in the tests, not in a user's run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from fhe.contract.bundle import BundleMetadata


class ConvertedFrom(BaseModel):
    """An encrypted model converted from a clear one: that model, its estimator, and how closely
    the circuit follows it on the calibration rows."""

    converted_from: str
    estimator: str | None = None
    agreement: float | None = None
    max_abs_difference: float | None = None


class TwinOf(BaseModel):
    """An encrypted model trained beside a clear twin: the twin, and how closely the circuit
    follows it on held-out rows (agreement for classes, largest difference for values)."""

    clear_twin: str
    agreement: float | None = None
    max_abs_difference: float | None = None


class ModelSummary(BaseModel):
    """One row of the model listing (`GET /v1/models`)."""

    name: str
    kind: Literal["fhe", "clear"]
    task: str | None = None
    input: str | None = None
    labels: list[str] = []
    columns: list[str] | None = None
    origin: ConvertedFrom | TwinOf | None = None
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
