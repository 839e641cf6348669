"""Accuracy over configurations: one real recipe run (and bundle) per configuration.

For each configuration (embedder frozen or fine-tuned, XGBoost or logistic regression, bits, depth,
trees, PBS error probability) it trains, compiles, measures clear and FHE-simulated accuracy on
the whole test split and real FHE on a sample, and writes a bundle under --out. Then it prints
the table and writes it as JSON. `benchmarks.latency --model all` then times every bundle
through a real server. Usage:

    .venv/bin/python -m benchmarks.sweep --out bench/models --json docs/bench-accuracy.json
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fhe.build.recipe import RecipeConfig, train
from fhe.contract.bundle import read_metadata


@dataclass(frozen=True)
class Configuration:
    """One point of the sweep."""

    name: str
    fine_tuned: bool
    model_type: str
    n_bits: int
    max_depth: int = 0
    n_estimators: int = 0
    p_error: float | None = None


CONFIGURATIONS = [
    Configuration("frozen-xgb-3b-d1-t50", False, "xgb", 3, 1, 50),
    Configuration("frozen-xgb-4b-d2-t50", False, "xgb", 4, 2, 50),
    Configuration("frozen-linear-8b", False, "linear", 8),
    Configuration("tuned-xgb-2b-d1-t25", True, "xgb", 2, 1, 25),
    Configuration("tuned-xgb-3b-d1-t10", True, "xgb", 3, 1, 10),
    Configuration("tuned-xgb-3b-d1-t25", True, "xgb", 3, 1, 25),
    Configuration("tuned-xgb-3b-d1-t50", True, "xgb", 3, 1, 50),
    Configuration("tuned-xgb-4b-d1-t25", True, "xgb", 4, 1, 25),
    Configuration("tuned-xgb-3b-d2-t25", True, "xgb", 3, 2, 25),
    Configuration("tuned-xgb-3b-d1-t25-p1e-6", True, "xgb", 3, 1, 25, 1e-6),
    Configuration("tuned-xgb-3b-d1-t25-p1e-3", True, "xgb", 3, 1, 25, 1e-3),
    Configuration("tuned-xgb-3b-d2-t25-p1e-3", True, "xgb", 3, 2, 25, 1e-3),
    Configuration("tuned-linear-4b", True, "linear", 4),
    Configuration("tuned-linear-6b", True, "linear", 6),
    Configuration("tuned-linear-8b", True, "linear", 8),
]


def recipe_for(configuration: Configuration, out: Path, fhe_sample: int) -> RecipeConfig:
    """The recipe run of one configuration; fine-tuning settings are the shipped default's."""
    base = RecipeConfig(out=out / configuration.name)
    return RecipeConfig(
        out=out / configuration.name,
        name=configuration.name,
        fine_tune_epochs=base.fine_tune_epochs if configuration.fine_tuned else 0,
        model_type=configuration.model_type,
        n_bits=[configuration.n_bits],
        max_depth=[configuration.max_depth or 1],
        n_estimators=[configuration.n_estimators or 1],
        max_pbs=10**9,
        p_error=configuration.p_error,
        cv_folds=0,
        fhe_sample=fhe_sample,
        cache_dir=Path(".cache"),
        command=f"python -m benchmarks.sweep (configuration {configuration.name})",
    )


def row_of(bundle: Path) -> dict[str, Any]:
    """The accuracy-table row a bundle's model.json gives."""
    meta = read_metadata(bundle)
    m, c = meta.metrics, meta.circuit
    return {
        "name": meta.name,
        "embedder": "fine-tuned" if meta.embedding.delta_sha256 else "frozen",
        "projection_width": meta.embedding.projection.width if meta.embedding.projection else None,
        "model_type": c.model_type,
        "params": c.params,
        "clear_accuracy": m.clear_accuracy,
        "simulated_accuracy": m.simulated_accuracy,
        "simulated_macro_f1": m.simulated_macro_f1,
        "fhe_sample_size": m.fhe_sample_size,
        "fhe_sample_accuracy": m.fhe_sample_accuracy,
        "fhe_sample_agreement_with_simulation": m.fhe_sample_agreement_with_simulation,
        "pbs_count": c.pbs_count,
        "max_bit_width": c.max_bit_width,
        "p_error": c.p_error,
        "fhe_seconds_median_in_recipe": m.fhe_seconds_median,
        "machine": m.machine,
    }


def main(
    out: Annotated[Path, typer.Option(help="where the bundles go")] = Path("bench/models"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the table here")] = None,
    only: Annotated[
        Optional[str], typer.Option(help="comma-separated configuration names (default: all)")
    ] = None,
    fhe_sample: Annotated[int, typer.Option(help="test texts run under real FHE")] = 20,
    reuse: Annotated[bool, typer.Option(help="keep bundles already in --out")] = True,
) -> None:
    """Train every configuration and print the accuracy table."""
    wanted = set(only.split(",")) if only else None
    rows = []
    for configuration in CONFIGURATIONS:
        if wanted is not None and configuration.name not in wanted:
            continue
        bundle = out / configuration.name
        if not (reuse and (bundle / "model.json").is_file()):
            train(recipe_for(configuration, out, fhe_sample))
        rows.append(row_of(bundle))
    typer.echo(
        f"{'configuration':24} {'clear':>7} {'sim':>7} {'F1':>6} {'FHE n':>6} {'FHE acc':>8} "
        f"{'PBS':>5} {'bits':>4}"
    )
    for row in rows:
        typer.echo(
            f"{row['name']:24} {row['clear_accuracy']:7.2%} {row['simulated_accuracy']:7.2%} "
            f"{row['simulated_macro_f1']:6.3f} {row['fhe_sample_size']:6d} "
            f"{row['fhe_sample_accuracy']:8.2%} {row['pbs_count']:5d} {row['max_bit_width']:4d}"
        )
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
