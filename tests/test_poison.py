"""Poison keys and crashing runs: one caller's bytes fail only that caller's request.

Keys made for another circuit abort Concrete's process (it asserts on a missing key-switch key
and then segfaults). The server checks keys against the model's key set before any worker sees
them, and its pool isolates a worker that dies anyway to the one task it was running.
Real servers, real workers, real Concrete runs on the shipped models.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.jobs import JobJournal
from tests.conftest import REPO, SAMPLE_TEXTS, job_labels
from tests.support.jobs import submit_items
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """fhe-server over the shipped models (sentiment and sentiment-linear), two FHE workers."""
    env = {"FHE_SERVER_WORKERS": "2", "FHE_SERVER_JOB_CONCURRENCY": "2"}
    server = ServerProcess(REPO / "models", tmp_path_factory.mktemp("poison") / "data", env=env)
    yield server.start()
    server.stop()


def attacker_keys(api: FHEServerAPI, cache: Path) -> bytes:
    """sentiment-linear's evaluation keys: 64 bytes without a single bootstrap key."""
    linear = EncryptedModel(api, "sentiment-linear", cache)
    linear.keys(upload=False)
    return linear.cache.evaluation_keys.read_bytes()


@pytest.mark.fhe
def test_poison_keys_are_refused_and_honest_work_in_flight_finishes(
    shipped: ServerProcess, tmp_path: Path
) -> None:
    with FHEServerAPI(shipped.url) as api:
        honest = EncryptedModel(api, "sentiment", tmp_path / "honest")
        honest.keys()
        ciphertexts = [honest.encrypt(text).ciphertext for text in SAMPLE_TEXTS]
        poison = attacker_keys(api, tmp_path / "attacker")
        spec = honest.client_spec

        entries = submit_items(honest, SAMPLE_TEXTS[:4], JobJournal(tmp_path / "honest"))
        synchronous: dict[str, object] = {}

        def predict_now() -> None:
            with FHEServerAPI(shipped.url) as own:
                synchronous["answer"] = own.predict(
                    "sentiment", ciphertexts[4], honest._key_id(), spec
                )

        sync_thread = threading.Thread(target=predict_now)
        sync_thread.start()

        at_upload = httpx.post(
            f"{shipped.url}/v1/keys", content=poison, headers={"X-Client-Spec": spec}, timeout=60
        )
        assert at_upload.status_code == 409, at_upload.text
        body = at_upload.json()
        assert body["code"] == "key_spec_mismatch"
        assert "2 bootstrap keys expected, 0 uploaded" in body["error"]
        assert "key-switch key 0 is missing" in body["differences"]

        unlabelled = httpx.post(f"{shipped.url}/v1/keys", content=poison, timeout=60)
        assert unlabelled.status_code == 201, unlabelled.text
        poison_id = unlabelled.json()["key_id"]
        headers = {"X-Key-Id": poison_id, "X-Client-Spec": spec}
        for route in ("predict", "jobs"):
            refused = httpx.post(
                f"{shipped.url}/v1/models/sentiment/{route}",
                content=ciphertexts[0],
                headers=headers,
                timeout=60,
            )
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == "key_spec_mismatch"

        sync_thread.join(timeout=300)
        assert all(label in honest.labels for label in job_labels(honest, entries))
        answer = synchronous["answer"]
        assert honest.decrypt(answer.ciphertext).label in honest.labels
        assert api.health().status == "ok"
        assert honest.predict(SAMPLE_TEXTS[:1])[0].label in honest.labels


@pytest.mark.fhe
def test_ciphertext_padded_past_its_spec_is_refused(shipped: ServerProcess, tmp_path: Path) -> None:
    """The client spec fixes a ciphertext's size: junk padding is refused with 413, unread."""
    with FHEServerAPI(shipped.url) as api:
        model = EncryptedModel(api, "sentiment-linear", tmp_path / "client")
        key_id = model.keys().key_id
        ciphertext = model.encrypt(SAMPLE_TEXTS[0]).ciphertext
        headers = {"X-Key-Id": key_id, "X-Client-Spec": model.client_spec}
        for route in ("predict", "jobs"):
            padded = httpx.post(
                f"{shipped.url}/v1/models/sentiment-linear/{route}",
                content=ciphertext + b"\0" * (1 << 20),
                headers=headers,
                timeout=60,
            )
            assert padded.status_code == 413, padded.text
        assert model.predict(SAMPLE_TEXTS[:1])[0].label in model.labels


@pytest.mark.fhe
def test_a_run_that_kills_its_worker_fails_alone(tmp_path: Path) -> None:
    """The pool itself, fed a run that really aborts Concrete next to honest runs: only the
    crashing run fails, and the pool goes on serving with a fresh worker."""
    from server.compute import WorkerCrashed
    from server.compute.local import FHEExecutor

    honest_keys = tmp_path / "honest.keys"
    poison_keys = tmp_path / "poison.keys"
    honest_keys.write_bytes(_serialized_keys("sentiment", tmp_path / "k1"))
    poison_keys.write_bytes(_serialized_keys("sentiment-linear", tmp_path / "k2"))
    ciphertext = _ciphertext("sentiment", tmp_path / "k1")
    bundle = str(REPO / "models" / "sentiment")

    async def runs() -> list[object]:
        pool = FHEExecutor(
            workers=2, max_queue=8, key_cache_entries=2, cache_dir=tmp_path / "circuits"
        )
        try:
            calls = [
                pool.run_circuit(bundle, "h", str(honest_keys), ciphertext),
                pool.run_circuit(bundle, "p", str(poison_keys), ciphertext),
                pool.run_circuit(bundle, "h", str(honest_keys), ciphertext),
                pool.run_circuit(bundle, "h", str(honest_keys), ciphertext),
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            results.append(await pool.run_circuit(bundle, "h", str(honest_keys), ciphertext))
            return results
        finally:
            pool.close()

    results = asyncio.run(runs())
    assert isinstance(results[1], WorkerCrashed), results[1]
    for index in (0, 2, 3, 4):
        assert isinstance(results[index], tuple), results[index]
        assert _decrypts("sentiment", tmp_path / "k1", results[index][0])


def _fhe_client(name: str, key_dir: Path) -> Any:
    from concrete.ml.deployment import FHEModelClient

    client = FHEModelClient(str(REPO / "models" / name), key_dir=str(key_dir))
    client.generate_private_and_evaluation_keys(force=False)
    return client


def _serialized_keys(name: str, key_dir: Path) -> bytes:
    return _fhe_client(name, key_dir).get_serialized_evaluation_keys()


def _ciphertext(name: str, key_dir: Path) -> bytes:
    import numpy as np

    client = _fhe_client(name, key_dir)
    width = len(client.model.input_quantizers)  # the circuit's input: 32 for the shipped PCA
    vector = np.random.default_rng(0).normal(size=(1, width)).astype("float32")
    return client.quantize_encrypt_serialize(vector)


def _decrypts(name: str, key_dir: Path, result: bytes) -> bool:
    import numpy as np

    scores = np.asarray(_fhe_client(name, key_dir).deserialize_decrypt_dequantize(result))
    return scores.shape[-1] == 3 and bool(np.isfinite(scores).all())
