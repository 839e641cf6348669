"""Every error of the encrypted API against a real server, which must keep serving afterwards."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def remote(tiny_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> EncryptedModel:
    api = FHEServerAPI(tiny_server.url)
    model = EncryptedModel(api, "tiny", tmp_path_factory.mktemp("cache"))
    model.keys()
    return model


@pytest.fixture(scope="module")
def ciphertext(remote: EncryptedModel) -> bytes:
    vector = remote.embedder.embed(["the flight was fine"]).astype(np.float32)
    return remote.circuit.encrypt(remote.circuit.quantize(vector))


def post_predict(server: ServerProcess, body: bytes, headers: dict[str, str], model: str = "tiny"):
    return httpx.post(
        f"{server.url}/v1/models/{model}/predict", content=body, headers=headers, timeout=120
    )


def headers_for(remote: EncryptedModel) -> dict[str, str]:
    return {"X-Key-Id": remote.cache.record().key_id, "X-Client-Spec": remote.client_spec}


def assert_still_serves(server: ServerProcess, remote: EncryptedModel, ciphertext: bytes) -> None:
    response = post_predict(server, ciphertext, headers_for(remote))
    assert response.status_code == 200, response.text
    assert remote.circuit.decrypt(response.content).shape == (1, 3)


def test_valid_request_works(tiny_server, remote, ciphertext) -> None:
    assert_still_serves(tiny_server, remote, ciphertext)


def test_unknown_model_is_404(tiny_server, remote, ciphertext) -> None:
    response = post_predict(tiny_server, ciphertext, headers_for(remote), model="nope")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_model"
    assert httpx.get(f"{tiny_server.url}/v1/models/nope").status_code == 404
    assert httpx.get(f"{tiny_server.url}/v1/models/nope/client.zip").status_code == 404


def test_missing_key_id_says_to_run_keygen(tiny_server, remote, ciphertext) -> None:
    response = post_predict(tiny_server, ciphertext, {"X-Client-Spec": remote.client_spec})
    assert response.status_code == 400
    assert response.json()["code"] == "missing_key_id"
    assert "fhe-client keygen" in response.json()["error"]


def test_unknown_key_id_says_to_run_keygen(tiny_server, remote, ciphertext) -> None:
    headers = {"X-Key-Id": "0" * 64, "X-Client-Spec": remote.client_spec}
    response = post_predict(tiny_server, ciphertext, headers)
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_key"
    assert "fhe-client keygen" in response.json()["error"]
    bad_shape = post_predict(tiny_server, ciphertext, {**headers, "X-Key-Id": "../../etc/passwd"})
    assert bad_shape.status_code == 404


def test_client_spec_mismatch_is_409_naming_both(tiny_server, remote, ciphertext) -> None:
    other = "f" * 64
    response = post_predict(
        tiny_server, ciphertext, {**headers_for(remote), "X-Client-Spec": other}
    )
    assert response.status_code == 409
    body = response.json()
    assert other in body["error"] and remote.client_spec in body["error"]
    assert body["server_client_spec"] == remote.client_spec


def test_missing_client_spec_is_400(tiny_server, remote, ciphertext) -> None:
    response = post_predict(tiny_server, ciphertext, {"X-Key-Id": remote.cache.record().key_id})
    assert response.status_code == 400
    assert remote.client_spec in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b"garbage" * 10, b"\x00" * 4096, "truncated"],
    ids=["garbage", "zeros", "truncated"],
)
def test_malformed_ciphertext_is_400(tiny_server, remote, ciphertext, body) -> None:
    if body == "truncated":
        body = ciphertext[: len(ciphertext) // 2]
    response = post_predict(tiny_server, body, headers_for(remote))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "malformed_ciphertext"
    assert_still_serves(tiny_server, remote, ciphertext)


def test_empty_ciphertext_is_400(tiny_server, remote) -> None:
    response = post_predict(tiny_server, b"", headers_for(remote))
    assert response.status_code == 400


def test_malformed_keys_are_400(tiny_server, remote, ciphertext) -> None:
    keys = remote.cache.evaluation_keys.read_bytes()
    for body in (b"not keys at all", keys[: len(keys) // 3]):
        response = httpx.post(f"{tiny_server.url}/v1/keys", content=body, timeout=120)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "malformed_keys"
    assert httpx.post(f"{tiny_server.url}/v1/keys", content=b"").status_code == 400
    assert_still_serves(tiny_server, remote, ciphertext)


def test_keys_for_unknown_spec_are_409(tiny_server, remote) -> None:
    response = httpx.post(
        f"{tiny_server.url}/v1/keys", content=b"x", headers={"X-Client-Spec": "a" * 64}
    )
    assert response.status_code == 409


def test_key_upload_is_idempotent(tiny_server, remote) -> None:
    keys = remote.cache.evaluation_keys.read_bytes()
    response = httpx.post(f"{tiny_server.url}/v1/keys", content=keys, timeout=120)
    assert response.status_code == 200
    assert response.json()["key_id"] == remote.cache.record().key_id
    assert response.json()["bytes"] == len(keys)


def test_listing_card_and_client_zip(tiny_server, remote) -> None:
    models = httpx.get(f"{tiny_server.url}/v1/models").json()["models"]
    assert models == [
        {
            "name": "tiny",
            "kind": "fhe",
            "task": "text-classification",
            "input": "text",
            "labels": ["negative", "neutral", "positive"],
            "columns": None,
            "origin": None,
            "status": "ready",
            "reason": None,
        }
    ]
    card = httpx.get(f"{tiny_server.url}/v1/models/tiny").json()
    assert card["client_spec_sha256"] == remote.client_spec
    assert card["metadata"]["metrics"]["evaluation_key_bytes"] > 0
    assert "Measured" in card["card"]
    spec = httpx.get(f"{tiny_server.url}/v1/models/tiny/client.zip")
    assert spec.status_code == 200 and spec.content[:2] == b"PK"


def test_fhe_work_runs_in_worker_processes(tiny_server) -> None:
    """As many worker processes as runs at once, which by default leave two cores per run."""
    children = psutil.Process(tiny_server.process.pid).children(recursive=True)
    workers = [c for c in children if "multiprocessing.spawn" in " ".join(c.cmdline())]
    assert len(workers) == max(1, (os.cpu_count() or 1) // 2)


def test_oversized_bodies_are_413(tmp_path: Path, tiny_models, remote, ciphertext) -> None:
    limits = {"FHE_SERVER_MAX_CIPHERTEXT_BYTES": "1000", "FHE_SERVER_MAX_KEY_BYTES": "2000"}
    server = ServerProcess(tiny_models, tmp_path / "data", env=limits).start()
    try:
        response = post_predict(server, ciphertext, headers_for(remote))
        assert response.status_code == 413
        assert response.json()["code"] == "too_large"
        keys = remote.cache.evaluation_keys.read_bytes()
        assert httpx.post(f"{server.url}/v1/keys", content=keys).status_code == 413

        def chunks():
            for _ in range(10):
                yield b"k" * 500

        chunked = httpx.post(f"{server.url}/v1/keys", content=chunks())
        assert chunked.status_code == 413
        assert list((tmp_path / "data" / "keys").glob("upload-*")) == []
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


def test_busy_server_answers_503_with_retry_after(
    tmp_path: Path, tiny_models, remote, ciphertext
) -> None:
    env = {"FHE_SERVER_WORKERS": "1", "FHE_SERVER_MAX_QUEUE": "0"}
    server = ServerProcess(tiny_models, tmp_path / "data", env=env).start()
    try:
        keys = remote.cache.evaluation_keys.read_bytes()
        assert httpx.post(f"{server.url}/v1/keys", content=keys, timeout=120).status_code == 201
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda _: post_predict(server, ciphertext, headers_for(remote)), range(6))
            )
        codes = sorted(response.status_code for response in answers)
        assert 200 in codes and 503 in codes, codes
        busy = next(response for response in answers if response.status_code == 503)
        assert busy.headers["Retry-After"] and busy.json()["code"] == "busy"
        assert_still_serves(server, remote, ciphertext)
    finally:
        server.stop()
