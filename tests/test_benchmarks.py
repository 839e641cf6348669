"""The benchmark scripts run on real parts: a linear bundle, the PBS timer, the throughput loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.pbs import single_pbs_seconds
from benchmarks.report import pareto_front
from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from fhe.build.recipe import RecipeConfig, TrainedBundle, train
from tests.conftest import REPO, SAMPLE_TEXTS
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """A logistic regression circuit on the same slice of tweets (no fine-tuning)."""
    config = RecipeConfig(
        out=tmp_path_factory.mktemp("linear") / "linear",
        name="linear",
        model_type="linear",
        n_bits=[6],
        fine_tune_epochs=0,
        cv_folds=0,
        fhe_sample=2,
        max_train_rows=800,
        cache_dir=REPO / ".cache",
    )
    return train(config)


@pytest.mark.fhe
def test_linear_bundle_has_no_bootstrap_and_decrypts_probabilities(
    linear_bundle: TrainedBundle, tmp_path: Path
) -> None:
    meta = linear_bundle.metadata
    assert meta.circuit.model_type == "LogisticRegression" and meta.circuit.pbs_count == 0
    assert meta.metrics.simulated_accuracy > 0.6
    assert meta.metrics.fhe_sample_agreement_with_simulation == 1.0
    assert "trained without cross-validation" in (linear_bundle.path / "README.md").read_text()
    server = ServerProcess(linear_bundle.path.parent, tmp_path / "data").start()
    try:
        with FHEServerAPI(server.url) as api:
            predictions = EncryptedModel(api, "linear", tmp_path / "client").predict(SAMPLE_TEXTS)
    finally:
        server.stop()
    clear = linear_bundle.model.predict(linear_bundle.embedder.embed(SAMPLE_TEXTS))
    assert [p.label for p in predictions] == [meta.labels[i] for i in clear]
    for prediction in predictions:
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.fhe
def test_single_pbs_time_is_measured() -> None:
    seconds = single_pbs_seconds(2, elements=8, repeats=1)
    assert 0 < seconds < 1


@pytest.mark.fhe
def test_a_circuit_lever_is_scored_and_timed_under_real_fhe() -> None:
    """benchmarks.circuit_levers on a small real circuit: simulated accuracy on each part, the
    cost estimate, and real runs compared with simulation."""
    from sklearn.datasets import load_breast_cancer

    from benchmarks.circuit_levers import Lever, measure

    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :4]
    parts = {"validation": (x[400:], y[400:]), "test": (x[300:400], y[300:400])}
    row = measure(Lever("tiny", trees=3, p_error=1e-3), x[:300], y[:300], parts, runs=2)
    assert row["pbs_count"] > 0 and row["complexity"] > 0
    assert 0.5 < row["validation"] <= 1 and 0.5 < row["test"] <= 1
    assert row["fhe_runs"] == 2 and 0 < row["fhe_seconds_median"] < 10
    assert 0 <= row["real_equals_simulated"] <= 2


def test_throughput_script_reports_each_level(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    command = [sys.executable, "-m", "benchmarks.throughput", "--models", str(tiny_models)]
    command += ["--model", "tiny", "--clients", "1,2", "--requests", "4", "--json", str(out)]
    subprocess.run(command, check=True, cwd=REPO, timeout=600)
    levels = json.loads(out.read_text())["levels"]
    assert [level["clients"] for level in levels] == [1, 2]
    for level in levels:
        assert level["requests"] == 4 and level["predictions_per_second"] > 0
        assert level["round_trip_p99_seconds"] >= level["round_trip_p50_seconds"] > 0
        assert np.isfinite(level["round_trip_to_circuit_ratio"])


@pytest.mark.fast
def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(0.85, 0.9, "a"), (0.86, 1.5, "b"), (0.84, 1.0, "c"), (0.80, 0.01, "d")]
    assert pareto_front(points) == ["a", "b", "d"]


def test_compression_script_measures_both_ways(tiny_bundle: TrainedBundle, tmp_path: Path) -> None:
    out = tmp_path / "keys.json"
    command = [sys.executable, "-m", "benchmarks.keys", "--bundle", str(tiny_bundle.path)]
    subprocess.run([*command, "--json", str(out)], check=True, cwd=REPO, timeout=600)
    result = json.loads(out.read_text())
    compressed, plain = result["compressed"], result["uncompressed"]
    assert compressed["evaluation_key_bytes"] == tiny_bundle.metadata.metrics.evaluation_key_bytes
    assert compressed["ciphertext_in_bytes"] == tiny_bundle.metadata.metrics.ciphertext_in_bytes
    assert plain["evaluation_key_bytes"] > 2 * compressed["evaluation_key_bytes"]
    assert plain["ciphertext_in_bytes"] > 10 * compressed["ciphertext_in_bytes"]


def _without_machine(page: str) -> list[str]:
    """The page's lines but the machine description, which names the machine the test runs on."""
    return [line for line in page.splitlines() if not line.startswith("Machine:")]


@pytest.mark.fast
def test_report_rebuilds_the_committed_tables(tmp_path: Path) -> None:
    """docs/benchmarks.md comes from the committed JSON and the shipped card, nothing else."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for source in (REPO / "docs").glob("bench-*.json"):
        (docs / source.name).write_bytes(source.read_bytes())
    command = [sys.executable, "-m", "benchmarks.report", "--docs", str(docs)]
    subprocess.run(command, check=True, cwd=REPO, timeout=300)
    written = (docs / "benchmarks.md").read_text()
    committed = (REPO / "docs" / "benchmarks.md").read_text()
    assert _without_machine(written) == _without_machine(committed)
    assert (docs / "pareto.png").read_bytes()[:4] == b"\x89PNG"
