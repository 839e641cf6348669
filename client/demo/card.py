"""A model card from the server in one line a person reads: what the model predicts, its circuit,
how well it scores and how long FHE takes."""

from __future__ import annotations

from typing import Any


def seconds_text(seconds: float) -> str:
    """A duration in seconds, or in milliseconds when it is under a tenth of a second."""
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def _test_score(metrics: dict[str, Any]) -> str | None:
    """How well the encrypted model scores on its held-out rows (text or tabular metrics)."""
    if "simulated_accuracy" in metrics:
        return f"accuracy {metrics['simulated_accuracy']:.1%} on its test set"
    simulated = metrics.get("simulated") or {}
    if "accuracy" in simulated:
        return f"accuracy {simulated['accuracy']:.1%} on its test set"
    if "r2" in simulated:
        return (
            f"R² {simulated['r2']:.2f}, mean absolute error {simulated['mae']:.3g} on its test set"
        )
    return None


def describe_card(card: dict[str, Any], name: str, server_url: str, noun: str) -> str:
    """One Markdown line about a ready FHE model; `noun` is what one prediction takes."""
    metadata = card.get("metadata") or {}
    metrics = metadata.get("metrics") or {}
    circuit = metadata.get("circuit") or {}
    params = circuit.get("params") or {}
    labels = card.get("labels") or []
    facts = [f"labels: {', '.join(labels)}" if labels else "predicts a number"]
    if params:
        facts.append(
            f"{circuit.get('model_type', 'model')} with "
            + ", ".join(f"{key} {value}" for key, value in params.items())
        )
    steps = ((metadata.get("input") or {}).get("preprocessing") or {}).get("steps") or []
    if steps:
        facts.append("preprocessing on the client: " + ", ".join(steps))
    score = _test_score(metrics)
    if score:
        facts.append(score)
    if "fhe_seconds_median" in metrics:
        facts.append(f"about {seconds_text(metrics['fhe_seconds_median'])} of FHE per {noun}")
    return f"Model **{name}** on `{server_url}`: " + "; ".join(facts) + "."
