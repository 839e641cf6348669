"""The client retries a `503 busy` with `Retry-After`, against a real server whose queue is full.

One FHE worker and no queue (FHE_SERVER_WORKERS=1, FHE_SERVER_MAX_QUEUE=0) over a copy of the
shipped `sentiment` bundle alone (about 0.7 s per run): of a few predictions sent at once, one
runs and the others are refused with 503 busy. With retries off the refusal reaches the caller;
with them every prediction ends, after the pauses the server asked for.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from client.api import FHEServerAPI, PredictAnswer
from client.encrypted_model import EncryptedModel
from client.errors import ServerError
from client.settings import ClientSettings
from tests.conftest import REPO, SAMPLE_TEXTS
from tests.support.server_process import ServerProcess

MODEL = "sentiment"
AT_ONCE = 3
"""Predictions sent at the same moment: one finds the worker free, the others find it busy."""
BUSY_LINE = re.compile(rf'"POST /v1/models/{MODEL}/predict HTTP/1\.1" 503')


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """fhe-server over the shipped sentiment bundle only, with one worker and no queue."""
    root = tmp_path_factory.mktemp("retries")
    (root / "models").mkdir()
    (root / "models" / MODEL).symlink_to(REPO / "models" / MODEL)
    env = {"FHE_SERVER_WORKERS": "1", "FHE_SERVER_MAX_QUEUE": "0"}
    server = ServerProcess(root / "models", root / "data", env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_cache(busy_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client cache whose keys the server holds, after one prediction that warms the worker."""
    cache = tmp_path_factory.mktemp("client")
    with FHEServerAPI(busy_server.url) as api:
        remote = EncryptedModel(api, MODEL, cache)
        remote.run(remote.encrypt(SAMPLE_TEXTS[0]).ciphertext)
    return cache


def predict_at_once(
    server: ServerProcess, cache: Path, settings: ClientSettings
) -> tuple[EncryptedModel, list[PredictAnswer | ServerError]]:
    """Encrypt AT_ONCE texts, then send them together, each from its own thread."""
    api = FHEServerAPI(server.url, settings=settings)
    remote = EncryptedModel(api, MODEL, cache)
    ciphertexts = [remote.encrypt(text).ciphertext for text in SAMPLE_TEXTS[:AT_ONCE]]
    start = threading.Barrier(AT_ONCE)

    def send(ciphertext: bytes) -> PredictAnswer | ServerError:
        start.wait()
        try:
            return remote.run(ciphertext)
        except ServerError as error:
            return error

    with api, ThreadPoolExecutor(AT_ONCE) as pool:
        return remote, list(pool.map(send, ciphertexts))


def outcomes(answers: list[PredictAnswer | ServerError]) -> list[str]:
    """What each request ended with, short enough for an assertion message."""
    return ["ok" if isinstance(a, PredictAnswer) else f"{a.status} {a.code}" for a in answers]


def busy_answers(server: ServerProcess) -> int:
    """503 answers to predict in the server's access log so far."""
    assert server.log is not None
    return len(BUSY_LINE.findall(server.log.read_text()))


@pytest.mark.fhe
def test_without_retries_a_full_queue_refuses_with_busy(
    busy_server: ServerProcess, key_cache: Path
) -> None:
    _, answers = predict_at_once(busy_server, key_cache, ClientSettings(retry_attempts=1))
    refused = [answer for answer in answers if isinstance(answer, ServerError)]
    assert refused and len(refused) < AT_ONCE, outcomes(answers)
    for error in refused:
        assert (error.status, error.code) == (503, "busy"), error
        assert error.retry_after is not None


@pytest.mark.fhe
def test_retries_honour_retry_after_until_every_prediction_ends(
    busy_server: ServerProcess, key_cache: Path
) -> None:
    before = busy_answers(busy_server)
    settings = ClientSettings(retry_attempts=30, retry_max_wait_seconds=10)
    remote, answers = predict_at_once(busy_server, key_cache, settings)
    assert outcomes(answers) == ["ok"] * AT_ONCE
    labels = [remote.decrypt(answer.ciphertext).label for answer in answers]
    assert all(label in remote.labels for label in labels), labels
    assert busy_answers(busy_server) > before
