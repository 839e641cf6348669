"""What the tree circuit's levers buy on one fine-tuning schedule's embeddings: the PBS error rate,
fewer trees, a client-side quantile transform before the 3-bit quantizer, and hard distillation
from a float teacher. Each row: FHE-simulated accuracy on the validation part / the test split,
PBS count, Concrete's cost estimate, and the real FHE median over validation tweets (with how
often the real result equals the simulated one). Usage:

    .venv/bin/python -m benchmarks.circuit_levers --json docs/bench-levers.json

It reuses `benchmarks.finetune_search`'s cached delta and embeddings of the schedule (and makes
them when missing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from sklearn.metrics import accuracy_score

from benchmarks.finetune_search import SCHEDULES, schedule_embeddings

WIDTH = 32
"""The shipped bundles' client-side PCA width."""


@dataclass(frozen=True)
class Lever:
    """One setting of the tree circuit: trees, error rate, what the client does, which labels."""

    name: str
    trees: int = 25
    p_error: float = 1e-6
    quantile: bool = False
    distilled: bool = False


LEVERS = [
    Lever("shipped: 25 trees, p_error 1e-6"),
    Lever("p_error 1e-3", p_error=1e-3),
    Lever("p_error 1e-2", p_error=1e-2),
    Lever("p_error 5e-2", p_error=5e-2),
    Lever("15 trees", trees=15),
    Lever("10 trees", trees=10),
    Lever("quantile transform on the client", quantile=True),
    Lever("distilled from a float teacher", distilled=True),
]


def _prepared(
    x_fit: np.ndarray, y_fit: np.ndarray, scored: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[dict[str, Callable[[np.ndarray], np.ndarray]], np.ndarray]:
    """The client-side transforms (PCA; PCA then quantiles) and the teacher's labels."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import QuantileTransformer

    pca = PCA(WIDTH, random_state=42).fit(x_fit)
    quantiles = QuantileTransformer(n_quantiles=1000, random_state=42).fit(pca.transform(x_fit))
    transforms = {
        "pca": pca.transform,
        "quantile": lambda x: quantiles.transform(pca.transform(x)),
    }
    teacher = LogisticRegression(C=0.1, max_iter=2000).fit(x_fit, y_fit)
    for part, (x, y) in scored.items():
        typer.echo(f"teacher (float, whole embedding) on {part}: {teacher.score(x, y):.2%}")
    return transforms, teacher.predict(x_fit)


def fitted(
    lever: Lever, fit: np.ndarray, labels: np.ndarray, parts: dict
) -> tuple[Any, dict[str, Any]]:
    """Fit, compile and score one lever under FHE simulation; the model (keys made) and its row."""
    from concrete.ml.sklearn import XGBClassifier

    model = XGBClassifier(
        n_bits=3, max_depth=1, n_estimators=lever.trees, random_state=42, n_jobs=2
    )
    model.fit(fit, labels)
    model.compile(fit, p_error=lever.p_error)
    statistics = model.fhe_circuit.statistics
    model.fhe_circuit.keygen()
    return model, {
        "lever": lever.name,
        "trees": lever.trees,
        "p_error": lever.p_error,
        "pbs_count": int(statistics["programmable_bootstrap_count"]),
        "complexity": float(statistics["complexity"]),
        **{
            part: float(accuracy_score(y, model.predict(x, fhe="simulate")))
            for part, (x, y) in parts.items()
        },
    }


def timed(models: list[Any], inputs: list[np.ndarray]) -> list[dict[str, Any]]:
    """Real FHE runs of each model on its rows, interleaved so that the machine's drift falls on
    all alike: the median seconds and how often the real result equals the simulated one."""
    seconds: list[list[float]] = [[] for _ in models]
    equal = [0] * len(models)
    for index in range(min(len(rows) for rows in inputs)):
        for which, (model, rows) in enumerate(zip(models, inputs, strict=True)):
            row = rows[index : index + 1]
            started = time.perf_counter()
            real = model.predict(row, fhe="execute")
            seconds[which].append(time.perf_counter() - started)
            equal[which] += int(real[0] == model.predict(row, fhe="simulate")[0])
    return [
        {
            "fhe_seconds_median": float(np.median(times)),
            "fhe_runs": len(times),
            "real_equals_simulated": same,
        }
        for times, same in zip(seconds, equal, strict=True)
    ]


def measure(lever: Lever, fit: np.ndarray, labels: np.ndarray, parts: dict, runs: int) -> dict:
    """One lever's row: simulated accuracy, cost, and `runs` real FHE runs on validation rows."""
    model, row = fitted(lever, fit, labels, parts)
    (timing,) = timed([model], [parts["validation"][0][:runs]])
    return {**row, **timing}


def main(
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the rows here")] = None,
    schedule: Annotated[str, typer.Option(help="fine-tuning schedule")] = SCHEDULES[0].name,
    runs: Annotated[int, typer.Option(help="real FHE runs per lever")] = 10,
    validation: Annotated[float, typer.Option(help="part of the training split held out")] = 0.1,
    cache: Annotated[Path, typer.Option(help="deltas and embeddings")] = Path(".cache/search"),
) -> None:
    """Score each lever of the tree circuit and print a table."""
    (chosen,) = [entry for entry in SCHEDULES if entry.name == schedule]
    x_fit, y_fit, scored, _ = schedule_embeddings(chosen, validation, cache)
    transforms, teacher_labels = _prepared(x_fit, y_fit, scored)
    models, rows, inputs = [], [], []
    for lever in LEVERS:
        transform = transforms["quantile" if lever.quantile else "pca"]
        parts = {part: (transform(x), y) for part, (x, y) in scored.items()}
        labels = teacher_labels if lever.distilled else y_fit
        model, row = fitted(lever, transform(x_fit), labels, parts)
        typer.echo(json.dumps(row), err=True)
        models.append(model)
        rows.append({"schedule": schedule, **row})
        inputs.append(parts["validation"][0][:runs])
    for row, timing in zip(rows, timed(models, inputs), strict=True):
        row.update(timing)
    base = rows[0]
    typer.echo("| lever | PBS | cost | validation / test | FHE median | real = simulated |")
    typer.echo("|---|---|---|---|---|---|")
    for row in rows:
        typer.echo(
            f"| {row['lever']} | {row['pbs_count']} | "
            f"{row['complexity'] / base['complexity']:.2f}x | "
            f"{row['validation']:.2%} / {row['test']:.2%} | {row['fhe_seconds_median']:.3f} s | "
            f"{row['real_equals_simulated']}/{row['fhe_runs']} |"
        )
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
