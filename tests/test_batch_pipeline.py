"""A batch through a real fhe-server with encryption ahead and two requests in flight: results in
order and equal to the clear model, and a bad input mid-batch reported after every input that
had already reached the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel, Prediction
from client.errors import ClientError
from client.inputs import EMBED_BATCH
from fhe.build.recipe import TrainedBundle
from tests.conftest import SAMPLE_TEXTS
from tests.support.server_process import ServerProcess
from tests.test_end_to_end import clear_labels


def test_a_pipelined_batch_keeps_order_and_labels(
    tiny_bundle: TrainedBundle, tiny_server: ServerProcess, tmp_path: Path
) -> None:
    texts = [f"{text} #{number}" for number in range(3) for text in SAMPLE_TEXTS]
    with FHEServerAPI(tiny_server.url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "client")
        reported: list[Prediction] = []
        results = remote.predict(texts, progress=reported.append, in_flight=3)
    assert [p.text for p in results] == texts and reported == results
    assert [p.label for p in results] == clear_labels(tiny_bundle, texts)


def test_a_bad_input_mid_batch_still_reports_what_reached_the_server(
    tiny_server: ServerProcess, tmp_path: Path
) -> None:
    texts: list[object] = [SAMPLE_TEXTS[n % len(SAMPLE_TEXTS)] for n in range(EMBED_BATCH + 3)]
    texts[EMBED_BATCH + 1] = 7  # the second embedding batch is refused when it is reached
    reported: list[Prediction] = []
    with FHEServerAPI(tiny_server.url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "client")
        with pytest.raises(ClientError, match="takes text, not int"):
            remote.predict(texts, progress=reported.append)
    assert [p.text for p in reported] == texts[:EMBED_BATCH]
