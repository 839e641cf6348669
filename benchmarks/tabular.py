"""The tabular bundles end to end: latency, key and ciphertext sizes, and accuracy or R² under
real FHE on every held-out row, through a real fhe-server.

Measures the shipped `breast-cancer` and `diabetes` bundles and, as a reference point,
Concrete-ML's own breast-cancer deployment configuration (XGBClassifier, 2 bits, 10 trees of
depth 3) trained by the tabular recipe on the same split. Usage:

    .venv/bin/python -m benchmarks.tabular --models models --json docs/bench-tabular.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import psutil
import typer

from benchmarks.latency import percentile, show
from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import LocalServer
from fhe.build.tabular_bundle import scores
from fhe.build.tabular_data import load_tabular_split
from fhe.build.tabular_recipe import TabularRecipeConfig, train_tabular
from fhe.contract.bundle import read_metadata

SHIPPED = {
    "breast-cancer": ("sklearn:breast_cancer", "classification"),
    "diabetes": ("sklearn:diabetes", "regression"),
}
REFERENCE = "breast-cancer-concrete-ml-reference"
"""Concrete-ML's breast-cancer deployment example configuration, trained by the recipe."""


def train_reference(out: Path) -> None:
    """XGBClassifier, n_bits 2, 10 trees, depth 3: Concrete-ML's deployment use case."""
    train_tabular(
        TabularRecipeConfig(
            out=out,
            name=REFERENCE,
            data="sklearn:breast_cancer",
            model_types=["xgb"],
            n_bits=[2],
            max_depth=[3],
            n_estimators=[10],
            max_pbs=10_000,
            fhe_sample=5,
            command="benchmarks.tabular (Concrete-ML's deployment configuration)",
        )
    )


def measure(api: FHEServerAPI, name: str, data: str, task: str, scratch: Path) -> dict:
    """Keys, one warm-up, then every held-out row, one at a time, through the server."""
    meta = read_metadata(scratch / "models" / name)
    split = load_tabular_split(
        data, task, test_size=meta.training.test_size, seed=meta.training.seed
    )
    remote = EncryptedModel(api, name, scratch / "client" / name)
    started = time.perf_counter()
    keys = remote.keys()
    keygen_and_upload = time.perf_counter() - started
    rows = split.x_test.to_dict(orient="records")
    remote.predict(rows[:1])
    predictions = remote.predict(rows, in_flight=1)  # one at a time, as the table says
    if task == "classification":
        predicted = np.searchsorted(split.labels, [p.label for p in predictions])
    else:
        predicted = np.array([p.value for p in predictions])
    fhe = [p.seconds["fhe"] for p in predictions]
    return {
        "model": name,
        "task": meta.task,
        "circuit": f"{meta.circuit.model_type} {meta.circuit.params}",
        "pbs_count": meta.circuit.pbs_count,
        "rows": len(rows),
        "real_fhe_scores": scores(meta.task, split.y_test, predicted),
        "card_unquantized_scores": meta.metrics.unquantized,
        "keygen_seconds": keys.keygen_seconds,
        "keygen_and_upload_seconds": keygen_and_upload,
        "evaluation_key_bytes": keys.evaluation_key_bytes,
        "ciphertext_in_bytes": predictions[0].bytes["ciphertext_in"],
        "ciphertext_out_bytes": predictions[0].bytes["ciphertext_out"],
        "prepare_seconds_median": statistics.median(p.seconds["prepare"] for p in predictions),
        "encrypt_seconds_median": statistics.median(p.seconds["encrypt"] for p in predictions),
        "fhe_seconds_median": statistics.median(fhe),
        "fhe_seconds_p90": percentile(fhe, 90),
        "end_to_end_seconds_median": statistics.median(p.seconds["total"] for p in predictions),
        "cores": psutil.cpu_count(),
    }


def main(
    models: Annotated[Path, typer.Option(help="the shipped models directory")] = Path("models"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
) -> None:
    """Measure the tabular bundles and the Concrete-ML reference configuration."""
    measured = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for name in SHIPPED:
            shutil.copytree(models / name, scratch / "models" / name)
        train_reference(scratch / "models" / REFERENCE)
        server = LocalServer(
            scratch / "models", scratch / "data", log=scratch / "server.log"
        ).start()
        try:
            with FHEServerAPI(server.url) as api:
                plan = {**SHIPPED, REFERENCE: SHIPPED["breast-cancer"]}
                for name, (data, task) in plan.items():
                    measured.append(measure(api, name, data, task, scratch))
                    show(measured[-1])
        finally:
            server.stop()
    if json_out is not None:
        json_out.write_text(json.dumps(measured, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
