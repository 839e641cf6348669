"""Keys survive a server restart; a client whose key is gone uploads it again by itself."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from tests.conftest import SAMPLE_TEXTS, run_client
from tests.support.server_process import ServerProcess


def test_keys_survive_restart(
    tmp_path: Path, tiny_models: Path, client_env: dict[str, str]
) -> None:
    server = ServerProcess(tiny_models, tmp_path / "data").start()
    try:
        keygen = run_client(["keygen", "-m", "tiny", "--server", server.url], client_env)
        assert keygen.returncode == 0, keygen.stderr
        server.stop()
        server.start()
        with FHEServerAPI(server.url) as api:
            remote = EncryptedModel(api, "tiny", Path(client_env["FHE_CLIENT_CACHE"]))
            record = remote.cache.record()
            vector = remote.embedder.embed([SAMPLE_TEXTS[0]])
            ciphertext = remote.circuit.encrypt(remote.circuit.quantize(vector))
            # Straight to the predict route: no upload can hide a lost key here.
            answer = api.predict("tiny", ciphertext, record.key_id, remote.client_spec)
            scores = remote.circuit.decrypt(answer.ciphertext)
        assert scores.shape == (1, 3)
    finally:
        server.stop()


def test_client_uploads_again_when_key_is_unknown(
    tmp_path: Path, tiny_models: Path, client_env: dict[str, str]
) -> None:
    first = ServerProcess(tiny_models, tmp_path / "first").start()
    try:
        keygen = run_client(["keygen", "-m", "tiny", "--server", first.url], client_env)
        assert keygen.returncode == 0, keygen.stderr
        key_id = keygen.stdout.split("key id: ")[1].split()[0]
    finally:
        first.stop()
    # A server with an empty key store: the client's key is unknown there.
    second = ServerProcess(tiny_models, tmp_path / "second").start()
    try:
        result = run_client(
            ["predict", "-m", "tiny", "--json", "--server", second.url, SAMPLE_TEXTS[1]], client_env
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["label"] in {"negative", "neutral", "positive"}
        assert (tmp_path / "second" / "keys" / f"{key_id}.keys").is_file()
        assert httpx.get(f"{second.url}/healthz").status_code == 200
    finally:
        second.stop()
