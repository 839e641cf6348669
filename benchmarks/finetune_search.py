"""Accuracy over fine-tuning schedules, chosen on a validation split the test split never sees.

Each schedule fine-tunes the embedder on the training split minus a stratified validation part,
then fits the two shipped circuits (Concrete-ML XGBClassifier 3 bits, depth 1, 25 trees;
LogisticRegression 8 bits) on its embeddings or on a client-side PCA of them, and their average,
and prints FHE-simulated accuracy on the validation part (to choose by) / the test split (to
report). Usage:

    .venv/bin/python -m benchmarks.finetune_search --json docs/bench-finetune.json
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from fhe.build.dataset import DEFAULT_DATA, load_split
from fhe.build.finetune import FineTuneConfig, fine_tune
from fhe.build.recipe import DEFAULT_EMBEDDING_MODEL, embed_cached
from fhe.embedding.torch_embedder import TextEmbedder


@dataclass(frozen=True)
class Schedule:
    """One fine-tuning schedule of the search."""

    name: str
    epochs: int
    learning_rate: float
    label_smoothing: float = 0.0
    top_layers: int | None = None


SCHEDULES = [
    Schedule("shipped-2ep-5e-5", 2, 5e-5),
    Schedule("2ep-5e-5-ls0.1", 2, 5e-5, 0.1),
    Schedule("3ep-5e-5-ls0.1", 3, 5e-5, 0.1),
    Schedule("2ep-1e-4-ls0.1", 2, 1e-4, 0.1),
    Schedule("4ep-3e-5-ls0.1", 4, 3e-5, 0.1),
]


REDUCTIONS = (None, 32, 64)
"""Client-side PCA widths tried before each circuit (None: the whole 384-wide embedding)."""


def circuits_accuracy(
    x_fit: np.ndarray, y_fit: np.ndarray, scored: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, dict[str, float]]:
    """FHE-simulated accuracy of the two shipped circuits, on the whole embedding or a PCA of
    it, and of their average, on each scored set."""
    from concrete.ml.sklearn import LogisticRegression, XGBClassifier
    from sklearn.decomposition import PCA

    result: dict[str, dict[str, float]] = {part: {} for part in scored}
    for width in REDUCTIONS:
        reduce = PCA(width, random_state=42).fit(x_fit) if width else None
        fit = reduce.transform(x_fit) if reduce else x_fit
        trees = XGBClassifier(n_bits=3, max_depth=1, n_estimators=25, random_state=42, n_jobs=2)
        linear = LogisticRegression(n_bits=8, max_iter=2000, random_state=42)
        for model in (trees, linear):
            model.fit(fit, y_fit)
            model.compile(fit)
        suffix = f"-pca{width}" if width else ""
        for part, (x, y) in scored.items():
            reduced = reduce.transform(x) if reduce else x
            tree_p = trees.predict_proba(reduced, fhe="simulate")
            linear_p = linear.predict_proba(reduced, fhe="simulate")
            result[part][f"xgb{suffix}"] = float(accuracy_score(y, tree_p.argmax(1)))
            result[part][f"linear{suffix}"] = float(accuracy_score(y, linear_p.argmax(1)))
            average = (tree_p + linear_p).argmax(1)
            result[part][f"average{suffix}"] = float(accuracy_score(y, average))
    return result


def split_texts(
    validation: float,
) -> tuple[list[str], np.ndarray, dict[str, tuple[list[str], np.ndarray]]]:
    """The texts fine-tuning and circuits fit on, and the scored parts: validation (a stratified
    part of the training split) and the test split."""
    split = load_split(DEFAULT_DATA)
    y_train = np.searchsorted(split.labels, split.train_labels)
    y_test = np.searchsorted(split.labels, split.test_labels)
    fit_texts, val_texts, y_fit, y_val = train_test_split(
        split.train_texts, y_train, test_size=validation, stratify=y_train, random_state=42
    )
    scored = {"validation": (list(val_texts), y_val), "test": (split.test_texts, y_test)}
    return list(fit_texts), np.asarray(y_fit), scored


def schedule_embeddings(
    schedule: Schedule, validation: float, cache: Path
) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """A schedule's embeddings of the fit texts and of each scored part, fine-tuning first unless
    its delta is cached; and the seconds fine-tuning took (0 when cached)."""
    texts, labels, scored_texts = split_texts(validation)
    config = FineTuneConfig(
        epochs=schedule.epochs,
        learning_rate=schedule.learning_rate,
        label_smoothing=schedule.label_smoothing,
        top_layers=schedule.top_layers,
    )
    delta = cache / f"search-{schedule.name}.safetensors"
    started = time.perf_counter()
    if not delta.is_file():
        base = TextEmbedder(DEFAULT_EMBEDDING_MODEL, max_length=128).load()
        fine_tune(base, texts, labels, config, delta)
    tuning_seconds = round(time.perf_counter() - started)
    tuned = TextEmbedder(DEFAULT_EMBEDDING_MODEL, max_length=128, delta=delta).load()
    x_fit = embed_cached(tuned, texts, cache, f"search-{schedule.name}-fit")
    scored = {
        part: (embed_cached(tuned, part_texts, cache, f"search-{schedule.name}-{part}"), y)
        for part, (part_texts, y) in scored_texts.items()
    }
    return x_fit, labels, scored, tuning_seconds


def run_schedule(schedule: Schedule, validation: float, cache: Path) -> dict[str, Any]:
    """Fine-tune with one schedule (or reuse its cached delta), embed, and score the circuits."""
    x_fit, labels, scored, tuning_seconds = schedule_embeddings(schedule, validation, cache)
    row = {
        "schedule": asdict(schedule),
        "fine_tuning_seconds": tuning_seconds,
        **circuits_accuracy(x_fit, labels, scored),
    }
    typer.echo(json.dumps(row), err=True)
    return row


def main(
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="write the rows here, keeping other schedules'")
    ] = None,
    only: Annotated[Optional[str], typer.Option(help="comma-separated schedule names")] = None,
    validation: Annotated[float, typer.Option(help="part of the training split held out")] = 0.1,
    cache: Annotated[Path, typer.Option(help="deltas and embeddings")] = Path(".cache/search"),
) -> None:
    """Fine-tune once per schedule and print validation and test accuracy of each circuit."""
    wanted = set(only.split(",")) if only else None
    rows = [
        run_schedule(schedule, validation, cache)
        for schedule in SCHEDULES
        if wanted is None or schedule.name in wanted
    ]
    if json_out is not None and json_out.is_file():  # rows of schedules not run now are kept
        ran = {row["schedule"]["name"] for row in rows}
        kept = [
            row for row in json.loads(json_out.read_text()) if row["schedule"]["name"] not in ran
        ]
        order = [schedule.name for schedule in SCHEDULES]
        rows = sorted([*kept, *rows], key=lambda row: order.index(row["schedule"]["name"]))
    heads = list(rows[0]["test"]) if rows else []
    typer.echo("| schedule | " + " | ".join(heads) + " |")
    typer.echo("|---" * (len(heads) + 1) + "|")
    for row in rows:
        cells = [f"{row['validation'][head]:.2%} / {row['test'][head]:.2%}" for head in heads]
        typer.echo(f"| {row['schedule']['name']} | " + " | ".join(cells) + " |")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
