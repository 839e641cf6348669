"""The row of the model listing, built one way for encrypted and clear models."""

from __future__ import annotations

from typing import Literal

from fhe.contract.model_card import ConvertedFrom, ModelSummary, TwinOf


def listing_row(
    name: str,
    kind: Literal["fhe", "clear"],
    *,
    task: str | None,
    input_kind: str | None,
    labels: list[str],
    columns: list[str] | None,
    origin: ConvertedFrom | TwinOf | None,
    reason: str | None,
) -> ModelSummary:
    """One model's row of `GET /v1/models`: ready unless there is a reason it cannot serve."""
    return ModelSummary(
        name=name,
        kind=kind,
        task=task,
        input=input_kind,
        labels=labels,
        columns=columns,
        origin=origin,
        status="ready" if reason is None else "unloadable",
        reason=reason,
    )
