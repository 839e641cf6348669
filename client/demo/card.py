"""A model card from the server in one line a person reads: what the model predicts, its circuit,
how well it scores and how long FHE takes."""

from __future__ import annotations

from fhe.contract.bundle import Metrics, TabularMetrics
from fhe.contract.model_card import FheModelCard


def seconds_text(seconds: float) -> str:
    """A duration in seconds, or in milliseconds when it is under a tenth of a second."""
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


SCORES = (
    ("accuracy", "accuracy {:.1%}"),
    ("r2", "R² {:.2f}"),
    ("mae", "mean absolute error {:.3g}"),
)
"""The tabular scores the card line shows, in order, each only when the card has it."""


def _test_score(metrics: Metrics | TabularMetrics | None) -> str | None:
    """How well the encrypted model scores on its held-out rows (text or tabular metrics)."""
    if isinstance(metrics, Metrics):
        return f"accuracy {metrics.simulated_accuracy:.1%} on its test set"
    simulated = metrics.simulated if isinstance(metrics, TabularMetrics) else {}
    shown = [form.format(simulated[key]) for key, form in SCORES if key in simulated]
    return ", ".join(shown) + " on its test set" if shown else None


def describe_card(card: FheModelCard, name: str, server_url: str, noun: str) -> str:
    """One Markdown line about a ready FHE model; `noun` is what one prediction takes."""
    facts = [f"labels: {', '.join(card.labels)}" if card.labels else "predicts a number"]
    metadata = card.metadata
    if metadata is not None:
        circuit = metadata.circuit
        if circuit.params:
            facts.append(
                f"{circuit.model_type} with "
                + ", ".join(f"{key} {value}" for key, value in circuit.params.items())
            )
        preprocessing = getattr(metadata.input, "preprocessing", None)
        if preprocessing is not None and preprocessing.steps:
            facts.append("preprocessing on the client: " + ", ".join(preprocessing.steps))
        score = _test_score(metadata.metrics)
        if score:
            facts.append(score)
        if metadata.metrics is not None:
            median = metadata.metrics.fhe_seconds_median
            facts.append(f"about {seconds_text(median)} of FHE per {noun}")
    return f"Model **{name}** on `{server_url}`: " + "; ".join(facts) + "."
