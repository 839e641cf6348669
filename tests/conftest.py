"""Shared fixtures: a small FHE bundle trained by the real recipe, and real fhe-server processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.encrypted_model import EncryptedModel
from client.jobs import JournalEntry, fetch_prediction
from fhe.build.dataset import DEFAULT_DATA
from fhe.build.recipe import RecipeConfig, TrainedBundle, train
from tests.support.demo_process import chromium
from tests.support.jobs import wait_for
from tests.support.server_process import BIN, ServerProcess

REPO = Path(__file__).resolve().parents[1]

# One embedder cache for the whole run, subprocesses included: each ONNX export of an embedder
# is about 90 MB, and a fresh one per test's key cache filled a CI machine's disk.
os.environ.setdefault("FHE_CLIENT_EMBEDDER_CACHE", str(REPO / ".cache" / "test-embedders"))

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Keep the run's exit status for pytest_unconfigure."""
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit with the run's own status once pytest is done.

    Concrete's runtime, once it has run a circuit in this process (the recipe's real-FHE sample
    does), ends the process with status 0 from its exit handlers, which would turn a failed run
    into a green one for make and CI. Output is flushed first; the handlers are skipped.
    """
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


FIXTURE_MARKS = {
    "tiny_bundle": "fhe",  # trained by the real recipe, which runs real FHE (keys included)
    "shipped_server": "fhe",  # its tests predict with the shipped bundle: real keys
    "browser": "browser",
    "postgres": "postgres",
    "redis_server": "redis",
    "bounded_redis": "redis",
    "locked_redis": "redis",
}
"""Markers every test gets whose fixtures (direct or indirect) include the fixture named; tests
that start those programs themselves carry the marker in their module."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with what its fixtures need (FIXTURE_MARKS), so that `-m "not fhe"` or
    `-m "not postgres"` leaves out every test that needs it."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for marker in sorted({FIXTURE_MARKS[name] for name in fixtures & FIXTURE_MARKS.keys()}):
            item.add_marker(marker)


SAMPLE_TEXTS = [
    "I love this airline, the crew was wonderful",
    "worst flight ever, they lost my bag and nobody helped",
    "@united what time does the gate open for flight 123?",
    "thanks for the upgrade, great service today",
    "my flight was cancelled again and I am stuck at the airport",
]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> TrainedBundle:
    """A small circuit (10 trees, depth 1, 3 bits) trained on a slice of the airline tweets.

    Its embedder is fine-tuned for a few steps at a high rate, so that the bundle carries an
    embedder delta that visibly changes the embeddings.
    """
    if not DEFAULT_DATA.is_file():
        pytest.fail(f"training data missing: {DEFAULT_DATA} (../shared/data beside the checkout)")
    models = tmp_path_factory.mktemp("models")
    config = RecipeConfig(
        out=models / "tiny",
        name="tiny",
        n_bits=[3],
        max_depth=[1],
        n_estimators=[10],
        max_pbs=1000,
        cv_folds=2,
        fhe_sample=2,
        max_train_rows=800,
        fine_tune_epochs=1,
        fine_tune_max_steps=4,
        fine_tune_learning_rate=1e-3,
        cache_dir=REPO / ".cache",
    )
    return train(config)


@pytest.fixture(scope="session")
def tiny_models(tiny_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding only the tiny bundle."""
    root = tmp_path_factory.mktemp("tiny-models")
    shutil.copytree(tiny_bundle.path, root / "tiny")
    return root


IRIS = "tabular-classification-linear-skops-sk1.5.0"
"""A clear scikit-learn fixture (iris, skops, scikit-learn 1.5.0) served beside the tiny bundle."""
SKLEARN_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sklearn"


@pytest.fixture(scope="session")
def mixed_models(tiny_bundle: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with the tiny FHE bundle (`tiny`) and a clear model (`iris`)."""
    root = tmp_path_factory.mktemp("mixed-models")
    shutil.copytree(tiny_bundle.path, root / "tiny")
    shutil.copytree(SKLEARN_FIXTURES / IRIS, root / "iris")
    return root


def clear_labels(bundle: TrainedBundle, texts: list[str]) -> list[str]:
    """The labels the bundle's model gives in the clear, which FHE must reproduce."""
    predicted = bundle.model.predict(bundle.features(texts))
    return [bundle.metadata.labels[i] for i in predicted]


def job_labels(remote: EncryptedModel, entries: list[JournalEntry]) -> list[str]:
    """Wait for submitted jobs, fetch and decrypt each; the labels in submission order."""
    results = {e.job_id: fetch_prediction(remote, e, s) for e, s in wait_for(remote, entries)}
    return [results[e.job_id].label for e in entries]


@pytest.fixture(scope="session")
def tiny_server(
    tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server over the tiny bundle shared by the tests that do not stop it."""
    server = ServerProcess(tiny_models, tmp_path_factory.mktemp("server") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """Environment for fhe-client subprocesses: a fresh key cache."""
    return {**os.environ, "FHE_CLIENT_CACHE": str(tmp_path / "client-cache")}


def run_client(
    args: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `fhe-client ARGS` as a subprocess and return its completed process."""
    return subprocess.run(
        [str(BIN / "fhe-client"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """fhe-server over the shipped models/ directory (the real sentiment bundle)."""
    server = ServerProcess(REPO / "models", tmp_path_factory.mktemp("shipped-server") / "data")
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright, for one module's browser tests.

    Module scope, not session: Playwright's sync API keeps an event loop running in the main
    thread while it is open, and later tests that call asyncio.run() would fail.
    """
    with chromium() as browser:
        yield browser
