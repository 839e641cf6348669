"""Tenants isolated under hostile load, in the key store (issue 26): real servers with two tokens.

Unchecked bytes never evict another tenant's keys, appended bytes and key floods are refused,
junk is refused without being read whole, and each owner sees only its own record of shared
bytes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks import hostile_keys
from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from tests.conftest import SAMPLE_TEXTS
from tests.support.server_process import ServerProcess

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-9876543210"}


def bearer(owner: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[owner]}", **headers}


@dataclass
class Tenant:
    """A token's client of the tiny model, with its own generated keys."""

    api: FHEServerAPI
    remote: EncryptedModel

    @property
    def serialized(self) -> bytes:
        """The evaluation keys this client generated."""
        return self.remote.cache.evaluation_keys.read_bytes()


@pytest.fixture(scope="module")
def circuits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One circuit cache for the module's servers, so that only the first compiles."""
    return tmp_path_factory.mktemp("circuits")


@pytest.fixture(scope="module")
def key_caches(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two client caches of the tiny model, each with keys generated once for the module."""
    caches = [tmp_path_factory.mktemp(f"keys{i}") for i in range(2)]
    server = ServerProcess(tiny_models, tmp_path_factory.mktemp("keygen") / "data").start()
    try:
        with FHEServerAPI(server.url) as api:
            for cache in caches:
                EncryptedModel(api, "tiny", cache).keys(upload=False)
    finally:
        server.stop()
    return caches


def serialized(cache: Path) -> bytes:
    """The evaluation keys a client cache holds for the tiny model."""
    return next(cache.glob("tiny/*/evaluation_keys.bin")).read_bytes()


def start(tiny_models: Path, data: Path, circuits: Path, **settings: str) -> ServerProcess:
    env = {
        "FHE_SERVER_TOKENS": json.dumps(TOKENS),
        "FHE_SERVER_CIRCUIT_CACHE_DIR": str(circuits),
        **{f"FHE_SERVER_{name.upper()}": value for name, value in settings.items()},
    }
    return ServerProcess(tiny_models, data, env=env).start()


@pytest.fixture
def tenants(key_caches: list[Path]) -> Iterator[Callable[[ServerProcess, str, int], Tenant]]:
    """Make a token's client of a server, with the keys of one of the module's caches."""
    opened: list[FHEServerAPI] = []

    def tenant(server: ServerProcess, owner: str, cache: int) -> Tenant:
        api = FHEServerAPI(server.url, token=TOKENS[owner])
        opened.append(api)
        return Tenant(api, EncryptedModel(api, "tiny", key_caches[cache]))

    yield tenant
    for api in opened:
        api.close()


def upload(server: ServerProcess, owner: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/keys", content=content, headers=bearer(owner, **headers), timeout=120
    )


def stalled_upload(server: ServerProcess, owner: str, declared: int, sent: bytes) -> socket.socket:
    """An upload that sends `sent` of `declared` bytes and then waits (the caller closes it)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        (
            f"POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS[owner]}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        + sent
    )
    return sock


def test_unchecked_uploads_never_evict_another_tenants_key(
    tiny_models: Path, circuits: Path, key_caches: list[Path], tenants, tmp_path: Path
) -> None:
    """A store with room for one key and a half: bob's junk, as large as alice's key, streams
    in and is refused without taking her key; uploads in progress have a bound of their own."""
    size = len(serialized(key_caches[0]))
    server = start(
        tiny_models,
        tmp_path / "data",
        circuits,
        keystore_max_bytes=str(size * 3 // 2),
        max_receiving_key_bytes=str(size * 3 // 2),
    )
    try:
        alice = tenants(server, "alice", 0)
        alice_keys = alice.remote.keys()
        assert alice_keys.uploaded
        junk = upload(server, "bob", os.urandom(size))
        assert junk.status_code == 400 and junk.json()["code"] == "malformed_keys", junk.text
        held = alice.api.key_status(alice_keys.key_id)
        assert held is not None and held.held, "bob's unchecked bytes evicted alice's key"
        # Alice's own segment table before random bytes: framed right, refused further on.
        framed = upload(server, "bob", serialized(key_caches[0])[:64] + os.urandom(size - 64))
        assert framed.status_code == 400, framed.text
        assert framed.json()["code"] == "malformed_keys", framed.text
        assert ".c++" not in framed.text
        held = alice.api.key_status(alice_keys.key_id)
        assert held is not None and held.held, "bob's unchecked bytes evicted alice's key"
        # Uploads in progress count against their own bound, never against the store.
        first = stalled_upload(server, "bob", size, os.urandom(size // 2 + 1))
        try:
            time.sleep(1)
            busy = upload(server, "bob", os.urandom(size))
            assert busy.status_code == 503 and busy.json()["code"] == "busy", busy.text
            assert busy.headers["retry-after"]
            assert alice.api.key_status(alice_keys.key_id) is not None
        finally:
            first.close()
        ciphertext = alice.remote.encrypt(SAMPLE_TEXTS[0]).ciphertext
        assert alice.remote.decrypt(alice.remote.run(ciphertext).ciphertext).label
        assert alice.api.key_status(alice_keys.key_id).held
    finally:
        server.stop()
    assert not list((tmp_path / "data" / "keys").glob("upload-*"))


def test_appended_bytes_and_key_floods_are_refused(
    tiny_models: Path, circuits: Path, key_caches: list[Path], tenants, tmp_path: Path
) -> None:
    """Keys with bytes appended are no new key (400); a token past its number of keys gets 429
    while the other token still uploads."""
    first, second = (serialized(cache) for cache in key_caches)
    server = start(tiny_models, tmp_path / "data", circuits, token_max_keys="1")
    try:
        alice = tenants(server, "alice", 0)
        spec = {"X-Client-Spec": alice.remote.client_spec}
        for extra in (b"\x00" * 8, os.urandom(1000)):
            padded = upload(server, "alice", first + extra, **spec)
            assert padded.status_code == 400, padded.text
            assert padded.json() == {
                "error": f"{len(extra)} bytes follow the serialized keys",
                "code": "malformed_keys",
            }
        assert upload(server, "alice", first, **spec).status_code == 201
        assert upload(server, "alice", first, **spec).status_code == 200  # held: no new key
        flood = upload(server, "alice", second, **spec)
        assert flood.status_code == 429 and flood.json()["code"] == "key_count_exceeded"
        assert "DELETE /v1/keys" in flood.json()["error"]
        assert upload(server, "bob", second, **spec).status_code == 201
        assert upload(server, "bob", first, **spec).status_code == 429
        deleted = httpx.delete(
            f"{server.url}/v1/keys/{alice.remote.cache.record().key_id}", headers=bearer("alice")
        )
        assert deleted.status_code == 204
        assert upload(server, "alice", second, **spec).status_code == 201
        keys_dir = tmp_path / "data" / "keys"
        assert len(list(keys_dir.glob("*.keys"))) == 1  # bob's and alice's second: the same bytes
    finally:
        server.stop()


def test_junk_is_refused_before_it_is_read_whole(
    tiny_models: Path, circuits: Path, tmp_path: Path
) -> None:
    """Three 64 MiB junk uploads at once, random or with a well-formed segment table, are
    refused quickly and without the API process's peak memory growing by what it received
    (reading one whole, as before, would grow it by 64 MiB)."""
    server = start(tiny_models, tmp_path / "data", circuits)
    size = 64 << 20
    try:
        assert server.process is not None
        hostile_keys.send(
            server.url, "random", 4096, TOKENS["bob"]
        )  # the first check loads what checks need
        for kind in ("random", "framed"):
            row = hostile_keys.measure(server.url, server.process.pid, kind, size, 3, TOKENS["bob"])
            assert row["answers"] == ["400 malformed_keys"], row
            assert row["peak_growth_mb"] < 32, row
            assert row["slowest_seconds"] < 30, row
    finally:
        server.stop()


def test_each_owner_sees_its_own_record_of_shared_bytes(
    tiny_models: Path, circuits: Path, tenants, tmp_path: Path
) -> None:
    """Bob uploading the bytes alice holds gets 201 and his own times; his use moves only his."""
    server = start(tiny_models, tmp_path / "data", circuits)
    try:
        alice = tenants(server, "alice", 0)
        key_id = alice.remote.keys().key_id
        mine = alice.api.key_status(key_id)
        time.sleep(1.1)
        bob = tenants(server, "bob", 0)  # the same cache: the same bytes, the same secret key
        answer = upload(server, "bob", bob.serialized, **{"X-Client-Spec": bob.remote.client_spec})
        assert answer.status_code == 201, answer.text
        assert answer.json()["key_id"] == key_id
        his = bob.api.key_status(key_id)
        assert his.created > mine.last_used and his.created > mine.created
        time.sleep(1.1)
        ciphertext = bob.remote.encrypt(SAMPLE_TEXTS[0]).ciphertext
        assert bob.api.predict("tiny", ciphertext, key_id, bob.remote.client_spec).ciphertext
        after = bob.api.key_status(key_id)
        assert after.last_used > his.last_used and after.created == his.created
        assert alice.api.key_status(key_id) == mine, "bob's upload or use showed in alice's record"
        again = upload(server, "bob", bob.serialized, **{"X-Client-Spec": bob.remote.client_spec})
        assert again.status_code == 200
        assert len(list((tmp_path / "data" / "keys").glob("*.keys"))) == 1
    finally:
        server.stop()
