"""The sentiment training recipe: embed, grid-search XGBoost, compile, measure, export the bundle.

Run `python -m fhe.build.recipe --help`; `make model` rebuilds the shipped models/sentiment bundle.
"""

from __future__ import annotations

import itertools
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from fhe.build.card import render_card
from fhe.build.circuit import circuit_cost, compile_model, export_circuit, measure_real_fhe
from fhe.build.dataset import DEFAULT_DATA, TextSplit, load_split
from fhe.build.finetune import DELTA_FILE, FineTuneConfig, fine_tune
from fhe.build.onnx_bundle import ship_onnx_embedder
from fhe.build.reduction import fit_projection
from fhe.contract.bundle import (
    CARD_FILE,
    ONNX_EMBEDDER_FILE,
    TOKENIZER_FILE,
    BundleMetadata,
    CircuitInfo,
    EmbeddingInfo,
    Metrics,
    ProjectionInfo,
    TextInput,
    TrainingInfo,
    write_metadata,
)
from fhe.contract.digest import bytes_sha256, file_sha256
from fhe.contract.outputs import top_classes
from fhe.contract.projection import PROJECTION_FILE, Projection, circuit_features
from fhe.embedding.torch_embedder import DEFAULT_EMBEDDING_MODEL, TextEmbedder

AIRLINE_LICENSE = (
    "CC BY-NC-SA 4.0 (Twitter US Airline Sentiment, CrowdFlower 'Data for Everyone', as listed on "
    "Kaggle)"
)

console = Console(stderr=True)


@dataclass
class RecipeConfig:
    """Every knob of one training run. The defaults rebuild the shipped sentiment bundle except
    `reduce_to`, which is off here (the command line's default is 32, as shipped)."""

    out: Path
    name: str = "sentiment"
    data: Path = DEFAULT_DATA
    text_column: str = "text"
    label_column: str = "airline_sentiment"
    id_column: str | None = "tweet_id"
    data_license: str = AIRLINE_LICENSE
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    max_length: int = 128
    fine_tune_epochs: int = 2
    fine_tune_learning_rate: float = 5e-5
    fine_tune_max_steps: int | None = None
    fine_tune_layers: int | None = None
    fine_tune_label_smoothing: float = 0.0
    reduce_to: int | None = None
    model_type: str = "xgb"
    n_bits: list[int] = field(default_factory=lambda: [3, 4])
    max_depth: list[int] = field(default_factory=lambda: [1])
    n_estimators: list[int] = field(default_factory=lambda: [10, 25, 50])
    max_pbs: int = 300
    p_error: float | None = 1e-6
    cv_folds: int = 3
    test_size: float = 0.1
    seed: int = 42
    fhe_sample: int = 200
    max_train_rows: int | None = None
    cache_dir: Path | None = None
    onnx_embedder: str | None = "float32"
    """Ship the embedder as ONNX in this precision (float32 or int8); None ships none, and
    clients then need torch to export it themselves."""
    command: str = ""


def embed_cached(
    embedder: TextEmbedder, texts: list[str], cache_dir: Path | None, tag: str
) -> np.ndarray:
    """Embed texts, reusing an .npy cache keyed by the weights, max length and the texts."""
    key = bytes_sha256("\x00".join([embedder.identity, *texts]).encode())
    path = cache_dir / f"embeddings-{tag}-{key[:16]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"embedding {tag}", total=len(texts))
        vectors = embedder.embed(texts, progress=lambda n: progress.advance(task, n))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def fine_tuned_embedder(
    config: RecipeConfig, base: TextEmbedder, texts: list[str], labels: np.ndarray, scratch: Path
) -> tuple[TextEmbedder, dict[str, Any]]:
    """Fine-tune the base embedder on the training texts (or reuse a cached delta); reload it.

    The reloaded embedder applies the float16 delta, exactly as clients will.
    """
    settings = FineTuneConfig(
        epochs=config.fine_tune_epochs,
        learning_rate=config.fine_tune_learning_rate,
        seed=config.seed,
        max_steps=config.fine_tune_max_steps,
        top_layers=config.fine_tune_layers,
        label_smoothing=config.fine_tune_label_smoothing,
    )
    key = bytes_sha256(
        "\x00".join([base.identity, repr(settings), *texts, *map(str, labels.tolist())]).encode()
    )
    folder = config.cache_dir or scratch
    delta = folder / f"delta-{key[:16]}.safetensors"
    started = time.perf_counter()
    if not delta.is_file():
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("fine-tuning the embedder", total=None)

            def report(step: int, total: int, loss: float) -> None:
                progress.update(
                    task, completed=step, total=total, description=f"fine-tuning, loss {loss:.3f}"
                )

            fine_tune(base, texts, labels, settings, delta, progress=report)
        console.log(f"fine-tuned the embedder in {time.perf_counter() - started:.0f} s")
    tuned = TextEmbedder(base.model_name, max_length=base.max_length, delta=delta).load()
    info = {
        "epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "max_steps": settings.max_steps,
        "top_layers": settings.top_layers,
        **({"label_smoothing": settings.label_smoothing} if settings.label_smoothing else {}),
        "seed": settings.seed,
        "trained_on": "the training split only",
    }
    return tuned, info


MODEL_TYPES = ("xgb", "linear")
"""Circuits the recipe trains: Concrete-ML's XGBClassifier, or its LogisticRegression."""


def grid_points(config: RecipeConfig) -> list[dict[str, int]]:
    """The hyper-parameter settings to try: n_bits for linear models, plus depth and trees."""
    if config.model_type == "linear":
        return [{"n_bits": n_bits} for n_bits in config.n_bits]
    if config.model_type != "xgb":
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, not {config.model_type!r}")
    return [
        {"n_bits": n_bits, "max_depth": depth, "n_estimators": trees}
        for n_bits, depth, trees in itertools.product(
            config.n_bits, config.max_depth, config.n_estimators
        )
    ]


def make_model(model_type: str, params: dict[str, int], seed: int) -> Any:
    """An untrained Concrete-ML model of the given type and settings."""
    if model_type == "linear":
        from concrete.ml.sklearn import LogisticRegression

        return LogisticRegression(**params, max_iter=2000, random_state=seed)
    from concrete.ml.sklearn import XGBClassifier

    return XGBClassifier(**params, random_state=seed, n_jobs=2)


def search_grid(
    config: RecipeConfig, x_train: np.ndarray, y_train: np.ndarray
) -> tuple[Any, dict[str, int], list[dict[str, Any]]]:
    """Cross-validate each grid point, compile it for its PBS cost, keep the best in budget.

    With `cv_folds` 0 the grid must hold one point, which is trained without cross-validation.
    """
    grid = grid_points(config)
    if config.cv_folds < 2 and len(grid) > 1:
        raise ValueError("choosing among several configurations needs cv_folds >= 2")
    rows: list[dict[str, Any]] = []
    best: tuple[float, Any, dict[str, int]] | None = None
    for params in grid:
        started = time.perf_counter()
        model = make_model(config.model_type, params, config.seed)
        cv_accuracy = None
        if config.cv_folds >= 2:
            folds = StratifiedKFold(config.cv_folds, shuffle=True, random_state=config.seed)
            cv_accuracy = float(cross_val_score(model, x_train, y_train, cv=folds).mean())
        model.fit(x_train, y_train)
        pbs, bits = circuit_cost(compile_model(model, x_train, config.p_error))
        rows.append(
            {"params": params, "cv_accuracy": cv_accuracy, "pbs_count": pbs, "max_bit_width": bits}
        )
        shown = "no CV" if cv_accuracy is None else f"CV accuracy {cv_accuracy:.4f}"
        console.log(
            f"{params}: {shown}, {pbs} PBS, {bits} bits ({time.perf_counter() - started:.0f} s)"
        )
        score = cv_accuracy if cv_accuracy is not None else 0.0
        if pbs <= config.max_pbs and (best is None or score > best[0]):
            best = (score, model, params)
    if best is None:
        cheapest = min(row["pbs_count"] for row in rows)
        raise ValueError(f"no configuration fits max_pbs={config.max_pbs}; cheapest is {cheapest}")
    return best[1], best[2], rows


@dataclass(frozen=True)
class TrainedBundle:
    """What a recipe run produced: the bundle's metadata, the compiled model and its embedder."""

    path: Path
    metadata: BundleMetadata
    model: Any
    embedder: TextEmbedder
    projection: Projection | None = None

    def features(self, texts: list[str]) -> np.ndarray:
        """The circuit's float inputs for texts, as a client makes them."""
        return circuit_features(self.embedder.embed(texts), self.projection)


def train(config: RecipeConfig) -> TrainedBundle:
    """Run the whole recipe and write the bundle and its card to `config.out`."""
    split: TextSplit = load_split(
        config.data,
        text_column=config.text_column,
        label_column=config.label_column,
        id_column=config.id_column,
        test_size=config.test_size,
        seed=config.seed,
    )
    train_texts, train_labels = split.train_texts, split.train_labels
    if config.max_train_rows is not None:
        train_texts, train_labels = (
            train_texts[: config.max_train_rows],
            train_labels[: config.max_train_rows],
        )
    console.log(f"{len(train_texts)} train and {len(split.test_texts)} test texts, {split.labels}")
    y_train = np.searchsorted(split.labels, train_labels)
    y_test = np.searchsorted(split.labels, split.test_labels)
    scratch = Path(tempfile.mkdtemp(prefix="recipe-"))
    embedder = TextEmbedder(config.embedding_model, max_length=config.max_length).load()
    fine_tuning = None
    if config.fine_tune_epochs > 0:
        embedder, fine_tuning = fine_tuned_embedder(config, embedder, train_texts, y_train, scratch)
    x_train = embed_cached(embedder, train_texts, config.cache_dir, "train")
    x_test = embed_cached(embedder, split.test_texts, config.cache_dir, "test")
    dimension = int(x_train.shape[1])
    projection = None
    if config.reduce_to:
        projection = fit_projection(x_train, config.reduce_to, config.seed)
        x_train, x_test = projection.apply(x_train), projection.apply(x_test)
        console.log(
            f"projected {dimension} -> {projection.width} numbers per text "
            f"({projection.explained_variance:.1%} of the variance)"
        )

    model, chosen, cv_rows = search_grid(config, x_train, y_train)
    started = time.perf_counter()
    circuit = compile_model(model, x_train, config.p_error)
    compile_seconds = time.perf_counter() - started
    pbs, bits = circuit_cost(circuit)

    clear = model.predict(x_test)
    simulated = model.predict(x_test, fhe="simulate")
    console.log(
        f"chosen {chosen}: clear {accuracy_score(y_test, clear):.4f}, "
        f"simulated {accuracy_score(y_test, simulated):.4f}"
    )

    config.out.mkdir(parents=True, exist_ok=True)
    spec_hash = export_circuit(model, config.out)
    (config.out / DELTA_FILE).unlink(missing_ok=True)
    if embedder.delta is not None:
        shutil.copyfile(embedder.delta, config.out / DELTA_FILE)
    for stale in (ONNX_EMBEDDER_FILE, TOKENIZER_FILE, PROJECTION_FILE):
        (config.out / stale).unlink(missing_ok=True)
    onnx_info = (
        ship_onnx_embedder(embedder, config.out, config.onnx_embedder)
        if config.onnx_embedder
        else None
    )
    projection_info = None
    if projection is not None:
        written = projection.save(config.out / PROJECTION_FILE)
        projection_info = ProjectionInfo(
            file=PROJECTION_FILE,
            sha256=file_sha256(written),
            bytes=written.stat().st_size,
            width=projection.width,
            explained_variance=projection.explained_variance,
        )
    sample = min(config.fhe_sample, len(x_test))
    real = measure_real_fhe(config.out, x_test[:sample])
    fhe_predictions = top_classes(real.outputs)

    metadata = BundleMetadata(
        name=config.name,
        labels=list(split.labels),
        description=(
            "Sentiment of an English text (airline tweets) predicted over encrypted data: the "
            "server never sees the text, its embedding or the prediction."
        ),
        input=TextInput(
            embedding=EmbeddingInfo(
                model_id=config.embedding_model,
                max_length=config.max_length,
                dimension=dimension,
                weights_sha256=embedder.weights_sha256,
                delta_file=DELTA_FILE if embedder.delta is not None else None,
                delta_sha256=embedder.delta_sha256,
                delta_bytes=embedder.delta.stat().st_size if embedder.delta is not None else None,
                fine_tuning=fine_tuning,
                projection=projection_info,
                onnx=onnx_info,
            )
        ),
        circuit=CircuitInfo(
            model_type=type(model).__name__,
            params=chosen,
            pbs_count=pbs,
            max_bit_width=bits,
            p_error=config.p_error,
        ),
        training=TrainingInfo(
            data=split.source,
            data_sha256=split.source_sha256,
            data_license=config.data_license,
            text_column=config.text_column,
            label_column=config.label_column,
            rows_read=split.rows_read,
            rows_kept=split.rows_kept,
            deduplicated_by=config.id_column,
            train_rows=len(train_texts),
            test_rows=len(split.test_texts),
            test_size=config.test_size,
            seed=config.seed,
            cv_folds=config.cv_folds,
            grid={
                "model_type": [config.model_type],
                "n_bits": config.n_bits,
                **(
                    {"max_depth": config.max_depth, "n_estimators": config.n_estimators}
                    if config.model_type == "xgb"
                    else {}
                ),
                "max_pbs": [config.max_pbs],
            },
            cv_results=cv_rows,
            command=config.command,
        ),
        metrics=Metrics(
            clear_accuracy=float(accuracy_score(y_test, clear)),
            clear_macro_f1=float(f1_score(y_test, clear, average="macro")),
            simulated_accuracy=float(accuracy_score(y_test, simulated)),
            simulated_macro_f1=float(f1_score(y_test, simulated, average="macro")),
            fhe_sample_accuracy=float(accuracy_score(y_test[:sample], fhe_predictions)),
            fhe_sample_agreement_with_simulation=float(
                np.mean(fhe_predictions == simulated[:sample])
            ),
            **real.timings(compile_seconds),
        ),
        client_spec_sha256=spec_hash,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_metadata(config.out, metadata)
    (config.out / CARD_FILE).write_text(render_card(metadata))
    shutil.rmtree(scratch, ignore_errors=True)
    console.log(f"bundle written to {config.out}")
    return TrainedBundle(config.out, metadata, model, embedder, projection)


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    """Command line: every RecipeConfig field as a flag."""
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def run(
        out: Path = typer.Option(Path("models/sentiment"), help="bundle directory to write"),
        name: str = typer.Option("sentiment", help="model name served by fhe-server"),
        data: Path = typer.Option(DEFAULT_DATA, help="CSV with texts and labels"),
        text_column: str = typer.Option("text"),
        label_column: str = typer.Option("airline_sentiment"),
        id_column: str = typer.Option("tweet_id", help="de-duplicate by this column ('' for none)"),
        data_license: str = typer.Option(AIRLINE_LICENSE, help="licence of the data, for the card"),
        embedding_model: str = typer.Option(DEFAULT_EMBEDDING_MODEL, help="HF id or local path"),
        max_length: int = typer.Option(128, help="max tokens per text"),
        fine_tune_epochs: int = typer.Option(2, help="fine-tune the embedder (0: frozen)"),
        fine_tune_learning_rate: float = typer.Option(5e-5, help="fine-tuning learning rate"),
        fine_tune_max_steps: int = typer.Option(0, help="stop fine-tuning after N steps (0: all)"),
        fine_tune_layers: int = typer.Option(0, help="fine-tune only the top N layers (0: all)"),
        fine_tune_label_smoothing: float = typer.Option(0.0, help="label smoothing (0: none)"),
        reduce_to: int = typer.Option(
            32, help="PCA of the embedding to N numbers on the client (0: the whole embedding)"
        ),
        model_type: str = typer.Option("xgb", help=f"circuit: {' or '.join(MODEL_TYPES)}"),
        n_bits: str = typer.Option("3,4", help="grid: quantization bits"),
        max_depth: str = typer.Option("1", help="grid: tree depth"),
        n_estimators: str = typer.Option("10,25,50", help="grid: number of trees"),
        max_pbs: int = typer.Option(300, help="circuit budget in programmable bootstraps"),
        p_error: float = typer.Option(
            1e-6, help="error probability of one PBS (0: Concrete-ML's default, 2**-40)"
        ),
        cv_folds: int = typer.Option(3, help="CV folds for choosing (0: one point, no CV)"),
        test_size: float = typer.Option(0.1),
        seed: int = typer.Option(42),
        fhe_sample: int = typer.Option(200, help="test texts run under real FHE"),
        max_train_rows: int = typer.Option(0, help="use only the first N train rows (0: all)"),
        cache_dir: Path = typer.Option(Path(".cache"), help="embedding cache ('' for none)"),
        onnx_embedder: str = typer.Option(
            "float32", help="ship the embedder as ONNX: float32, int8 or none"
        ),
    ) -> None:
        train(
            RecipeConfig(
                out=out,
                name=name,
                data=data,
                text_column=text_column,
                label_column=label_column,
                id_column=id_column or None,
                data_license=data_license,
                embedding_model=embedding_model,
                max_length=max_length,
                fine_tune_epochs=fine_tune_epochs,
                fine_tune_learning_rate=fine_tune_learning_rate,
                fine_tune_max_steps=fine_tune_max_steps or None,
                fine_tune_layers=fine_tune_layers or None,
                fine_tune_label_smoothing=fine_tune_label_smoothing,
                reduce_to=reduce_to or None,
                model_type=model_type,
                n_bits=_int_list(n_bits),
                max_depth=_int_list(max_depth),
                n_estimators=_int_list(n_estimators),
                max_pbs=max_pbs,
                p_error=p_error or None,
                cv_folds=cv_folds,
                test_size=test_size,
                seed=seed,
                fhe_sample=fhe_sample,
                max_train_rows=max_train_rows or None,
                cache_dir=cache_dir if str(cache_dir) else None,
                onnx_embedder=None if onnx_embedder == "none" else onnx_embedder,
                command="python -m fhe.build.recipe " + shlex.join(argv or sys.argv[1:]),
            )
        )

    app(argv)


if __name__ == "__main__":
    main()
