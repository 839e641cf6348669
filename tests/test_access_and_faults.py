"""API tokens and what they own, quotas, and abuse: truncated, stalled and trickled bodies.

Everything runs against real servers on loopback; memory is measured on the server process.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from client.api import FHEServerAPI, ServerError
from client.encrypted_model import EncryptedModel
from tests.conftest import SAMPLE_TEXTS
from tests.support.server_process import ServerProcess

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210"


@pytest.fixture(scope="module")
def models(mixed_models: Path) -> Path:
    return mixed_models


@pytest.fixture(scope="module")
def guarded(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with two tokens (Bob's configured by its hash) and small per-token job limits."""
    tokens = {"alice": ALICE, "bob": "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()}
    env = {
        "FHE_SERVER_TOKENS": json.dumps(tokens),
        "FHE_SERVER_TOKEN_MAX_JOBS_IN_FLIGHT": "3",
        "FHE_SERVER_JOB_CONCURRENCY": "1",
    }
    server = ServerProcess(models, tmp_path_factory.mktemp("guarded") / "data", env=env).start()
    yield server
    server.stop()


def as_user(server: ServerProcess, token: str, cache: Path) -> tuple[FHEServerAPI, EncryptedModel]:
    api = FHEServerAPI(server.url, token=token)
    return api, EncryptedModel(api, "tiny", cache)


def test_tokens_are_required_except_for_health(guarded: ServerProcess) -> None:
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200
    assert httpx.get(f"{guarded.url}/openapi.json").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ALICE}"}):
        response = httpx.get(f"{guarded.url}/v1/models", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    for token in (ALICE, BOB):
        ok = httpx.get(f"{guarded.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200


def test_bob_can_neither_use_nor_read_alices_keys_and_jobs(
    guarded: ServerProcess, tmp_path: Path
) -> None:
    alice_api, alice = as_user(guarded, ALICE, tmp_path / "alice")
    bob_api, bob = as_user(guarded, BOB, tmp_path / "bob")
    with alice_api, bob_api:
        key_id = alice.keys().key_id
        ciphertext = alice.encrypt(SAMPLE_TEXTS[0]).ciphertext
        job = alice_api.submit_job("tiny", ciphertext, key_id, alice.client_spec)
        assert alice.run(ciphertext).ciphertext
        with pytest.raises(ServerError) as used:
            bob_api.predict("tiny", ciphertext, key_id, bob.client_spec)
        assert used.value.status == 404 and used.value.code == "unknown_key"
        with pytest.raises(ServerError) as submitted:
            bob_api.submit_job("tiny", ciphertext, key_id, bob.client_spec)
        assert submitted.value.status == 404
        for read in (bob_api.job, bob_api.job_result):
            with pytest.raises(ServerError) as denied:
                read(job.job_id)
            assert denied.value.status == 404 and denied.value.code == "unknown_job"
        assert [j.job_id for j in alice_api.jobs()] == [job.job_id]
        assert bob_api.jobs() == []
        deadline = time.monotonic() + 60
        while alice_api.job(job.job_id).status not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert alice.decrypt(alice_api.job_result(job.job_id).ciphertext).label
        bob_key = bob.keys().key_id
        assert bob_key != key_id
        assert bob.run(bob.encrypt(SAMPLE_TEXTS[1]).ciphertext).ciphertext


def test_jobs_in_flight_are_limited_per_token(guarded: ServerProcess, tmp_path: Path) -> None:
    api, alice = as_user(guarded, ALICE, tmp_path / "alice")
    with api:
        key_id = alice.keys().key_id
        ciphertexts = [alice.encrypt(text).ciphertext for text in SAMPLE_TEXTS]
        accepted, refused = [], []
        for ciphertext in ciphertexts:
            try:
                accepted.append(api.submit_job("tiny", ciphertext, key_id, alice.client_spec))
            except ServerError as error:
                refused.append(error)
        with pytest.raises(ServerError) as early:
            api.job_result(accepted[-1].job_id)
    assert early.value.status == 409 and early.value.code == "job_not_finished"
    assert early.value.retry_after is not None
    assert len(accepted) >= 3 and refused, (len(accepted), refused)
    assert all(e.status == 429 and e.code == "too_many_jobs" for e in refused)
    assert refused[0].retry_after is not None


def test_key_bytes_are_limited_per_token(models: Path, tmp_path: Path) -> None:
    env = {
        "FHE_SERVER_TOKENS": json.dumps({"alice": ALICE}),
        "FHE_SERVER_TOKEN_MAX_KEY_BYTES": "1000",
    }
    server = ServerProcess(models, tmp_path / "data", env=env).start()
    try:
        api, alice = as_user(server, ALICE, tmp_path / "alice")
        with api, pytest.raises(ServerError) as refused:
            alice.keys()
        assert refused.value.status == 403 and refused.value.code == "key_quota_exceeded"
        assert list((tmp_path / "data" / "keys").glob("*.keys")) == []
    finally:
        server.stop()


@pytest.fixture(scope="module")
def strict(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A development-mode server with short body timeouts."""
    env = {"FHE_SERVER_BODY_TIMEOUT_SECONDS": "1", "FHE_SERVER_BODY_DEADLINE_SECONDS": "3"}
    server = ServerProcess(models, tmp_path_factory.mktemp("strict") / "data", env=env).start()
    yield server
    server.stop()


def raw_request(server: ServerProcess, head: str, pieces: list[bytes], pause: float) -> str:
    """Send headers, then body pieces `pause` seconds apart; return what the server answered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(pause)
        except OSError:
            pass
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.decode(errors="replace")


def post_head(path: str, length: int, extra: str = "") -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    )


def test_stalled_and_trickled_bodies_time_out(strict: ServerProcess) -> None:
    started = time.monotonic()
    stalled = raw_request(strict, post_head("/v1/keys", 5000), [b"x" * 10], pause=0)
    assert stalled.startswith("HTTP/1.1 408"), stalled[:200]
    assert '"body_timeout"' in stalled and time.monotonic() - started < 10
    started = time.monotonic()
    trickled = raw_request(strict, post_head("/v1/keys", 5000), [b"x"] * 40, pause=0.5)
    assert trickled.startswith("HTTP/1.1 408"), trickled[:200]
    assert time.monotonic() - started < 15
    assert list((strict.data_dir / "keys").glob("upload-*")) == []


def test_truncated_uploads_are_refused_and_the_server_keeps_serving(
    strict: ServerProcess, tmp_path: Path
) -> None:
    with FHEServerAPI(strict.url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "client")
        keys = remote.keys(upload=False)
        serialized = remote.cache.evaluation_keys.read_bytes()
        half_keys = httpx.post(
            f"{strict.url}/v1/keys", content=serialized[: len(serialized) // 2], timeout=60
        )
        assert half_keys.status_code == 400 and half_keys.json()["code"] == "malformed_keys"
        remote.keys()
        ciphertext = remote.encrypt(SAMPLE_TEXTS[0]).ciphertext
        headers = {"X-Key-Id": keys.key_id, "X-Client-Spec": remote.client_spec}
        half = httpx.post(
            f"{strict.url}/v1/models/tiny/predict",
            content=ciphertext[: len(ciphertext) // 2],
            headers=headers,
            timeout=60,
        )
        assert half.status_code == 400, half.text
        assert half.json()["code"] == "malformed_ciphertext"
        cut_short = raw_request(
            strict,
            post_head(
                "/v1/models/tiny/predict",
                len(ciphertext),
                extra="".join(f"{k}: {v}\r\n" for k, v in headers.items()),
            ),
            [ciphertext[:100]],
            pause=0,
        )
        assert cut_short.startswith("HTTP/1.1 408"), cut_short[:200]
        assert remote.predict(SAMPLE_TEXTS[:1])[0].label in remote.labels


def test_memory_stays_bounded_under_abuse(strict: ServerProcess, tmp_path: Path) -> None:
    """Many oversized, malformed and stalled requests do not grow the API process."""
    process = psutil.Process(strict.process.pid)
    with FHEServerAPI(strict.url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "client")
        key_id = remote.keys().key_id
        headers = {"X-Key-Id": key_id, "X-Client-Spec": remote.client_spec}
        remote.predict(SAMPLE_TEXTS[:1])
    before = process.memory_info().rss
    big = b"\x00" * (17 << 20)
    for _ in range(5):
        assert (
            httpx.post(
                f"{strict.url}/v1/models/tiny/predict", content=big, headers=headers, timeout=60
            ).status_code
            == 413
        )
        junk = httpx.post(
            f"{strict.url}/v1/models/tiny/predict",
            content=b"\x01" * 4096,
            headers=headers,
            timeout=60,
        )
        assert junk.status_code == 400 and junk.json()["code"] == "malformed_ciphertext", junk.text
        assert (
            httpx.post(f"{strict.url}/v1/keys", content=b"\x02" * 4096, timeout=60).status_code
            == 400
        )
        assert raw_request(strict, post_head("/v1/keys", 1 << 20), [b"x" * 1000], 0).startswith(
            "HTTP/1.1 408"
        )
    grown = process.memory_info().rss - before
    assert grown < 64 << 20, f"API process grew by {grown / 1e6:.1f} MB"
    with FHEServerAPI(strict.url) as api:
        assert EncryptedModel(api, "tiny", tmp_path / "client").predict(SAMPLE_TEXTS[:1])


def test_a_missing_token_is_explained_to_demo_users(guarded: ServerProcess) -> None:
    from client.demo.messages import explain

    with FHEServerAPI(guarded.url, token="") as api, pytest.raises(ServerError) as refused:
        api.models()
    assert "needs an API token" in explain(refused.value, guarded.url)
