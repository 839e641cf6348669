"""fhe-client keygen and predict as subprocesses against a real fhe-server subprocess."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fhe.recipe import TrainedBundle
from tests.conftest import SAMPLE_TEXTS, run_client
from tests.server_process import ServerProcess


def clear_labels(bundle: TrainedBundle, texts: list[str]) -> list[str]:
    """What the same quantized model predicts without encryption."""
    vectors = bundle.embedder.embed(texts)
    return [bundle.metadata.labels[i] for i in bundle.model.predict(vectors)]


def test_keygen_then_predict_json_matches_clear_model(
    tiny_bundle: TrainedBundle, tiny_server: ServerProcess, client_env: dict[str, str]
) -> None:
    server = ["--server", tiny_server.url]
    keygen = run_client(["keygen", "--model", "tiny", *server], client_env)
    assert keygen.returncode == 0, keygen.stderr
    assert "key id: " in keygen.stdout
    assert "evaluation keys:" in keygen.stdout and "MB" in keygen.stdout

    result = run_client(
        ["predict", "--model", "tiny", "--json", "-v", *server, *SAMPLE_TEXTS], client_env
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [row["text"] for row in rows] == SAMPLE_TEXTS
    assert [row["label"] for row in rows] == clear_labels(tiny_bundle, SAMPLE_TEXTS)
    for row in rows:
        assert set(row["scores"]) == set(tiny_bundle.metadata.labels)
        assert row["scores"][row["label"]] >= max(row["scores"].values()) - 1e-9
        assert row["seconds"]["fhe"] > 0 and row["bytes"]["ciphertext_in"] > 0


def test_keygen_is_cached_and_key_id_is_content_hash(
    tiny_server: ServerProcess, client_env: dict[str, str]
) -> None:
    first = run_client(["keygen", "-m", "tiny", "--server", tiny_server.url], client_env)
    second = run_client(["keygen", "-m", "tiny", "--server", tiny_server.url], client_env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    key_id = first.stdout.split("key id: ")[1].split()[0]
    assert second.stdout.split("key id: ")[1].split()[0] == key_id
    assert "(generated)" in first.stdout and "reused from cache" in second.stdout
    cache = Path(client_env["FHE_CLIENT_CACHE"])
    stored = next(cache.glob("tiny/*/evaluation_keys.bin")).read_bytes()
    import hashlib

    assert hashlib.sha256(stored).hexdigest() == key_id
    server = ["--server", tiny_server.url]
    forced = run_client(["keygen", "-m", "tiny", "--force", *server], client_env)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split("key id: ")[1].split()[0] != key_id, "--force kept the old keys"
    predicted = run_client(["predict", "-m", "tiny", *server, "hi"], client_env)
    assert predicted.returncode == 0, predicted.stderr


def test_predict_csv_in_and_out(
    tiny_bundle: TrainedBundle,
    tiny_server: ServerProcess,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "tweet"])
        for number, text in enumerate(SAMPLE_TEXTS[:3]):
            writer.writerow([number, text])
    out = tmp_path / "out.csv"
    args = ["predict", "-m", "tiny", "--input", str(source), "--text-column", "tweet"]
    result = run_client([*args, "--output", str(out), "--server", tiny_server.url], client_env)
    assert result.returncode == 0, result.stderr
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["tweet"] for row in rows] == SAMPLE_TEXTS[:3]
    assert [row["label"] for row in rows] == clear_labels(tiny_bundle, SAMPLE_TEXTS[:3])
    scores = np.array(
        [[float(row[f"score_{label}"]) for label in tiny_bundle.metadata.labels] for row in rows]
    )
    assert scores.shape == (3, len(tiny_bundle.metadata.labels))


def test_models_lists_the_bundle(tiny_server: ServerProcess, client_env: dict[str, str]) -> None:
    result = run_client(["models", "--server", tiny_server.url], client_env)
    assert result.returncode == 0, result.stderr
    assert "tiny" in result.stdout and "ready" in result.stdout


def test_client_reports_unreachable_server(client_env: dict[str, str]) -> None:
    result = run_client(["models", "--server", "http://127.0.0.1:9"], client_env)
    assert result.returncode == 1
    assert "cannot reach fhe-server" in result.stderr
    assert "Traceback" not in result.stderr
