"""fhe-client keygen and predict as subprocesses against a real fhe-server subprocess."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fhe.build.recipe import TrainedBundle
from tests.conftest import SAMPLE_TEXTS, run_client
from tests.support.server_process import ServerProcess


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
    server = ["--server", tiny_server.url, "--json"]
    before = run_client(["predict", "-m", "tiny", *server, SAMPLE_TEXTS[1]], client_env)
    forced = run_client(["keygen", "-m", "tiny", "--force", *server[:2]], client_env)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split("key id: ")[1].split()[0] != key_id, "--force kept the old keys"
    after = run_client(["predict", "-m", "tiny", *server, SAMPLE_TEXTS[1]], client_env)
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout), "new keys decrypt differently"


def test_a_one_shot_predict_imports_neither_torch_nor_concrete_ml(
    tiny_server: ServerProcess, client_env: dict[str, str]
) -> None:
    """After the first run has exported the embedder, a one-shot run needs Concrete's runtime,
    ONNX Runtime and tokenizers only (python -X importtime lists every import)."""
    import subprocess
    import sys

    command = [sys.executable, "-X", "importtime", "-m", "client.cli", "predict", "-m", "tiny"]
    command += ["--server", tiny_server.url, SAMPLE_TEXTS[0]]
    runs = [
        subprocess.run(command, env=client_env, capture_output=True, text=True, timeout=600)
        for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in runs[1].stderr.splitlines() if "|" in line}
    assert {"concrete.compiler", "onnxruntime", "tokenizers"} <= imported
    heavy = {"torch", "transformers", "concrete.fhe", "concrete.ml", "sklearn"} & imported
    assert not heavy, f"a one-shot predict imported {sorted(heavy)}"


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
