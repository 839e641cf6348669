"""A 202 is a promise: keys that accepted jobs need are never evicted from under them.

A real server with a key store that holds one key: a victim queues jobs, another client uploads
other keys meanwhile, and every accepted job still finishes with the right label.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.api import FHEServerAPI, ServerError
from client.encrypted_model import EncryptedModel
from client.jobs import JobJournal
from fhe.build.recipe import TrainedBundle
from tests.conftest import SAMPLE_TEXTS, clear_labels, job_labels
from tests.support.jobs import submit_items
from tests.support.server_process import ServerProcess


def test_jobs_accepted_before_an_eviction_all_finish(
    tiny_models: Path, tiny_bundle: TrainedBundle, tmp_path: Path
) -> None:
    from concrete.ml.deployment import FHEModelClient

    sizing = FHEModelClient(str(tiny_models / "tiny"), key_dir=str(tmp_path / "sizing"))
    sizing.generate_private_and_evaluation_keys()
    key_bytes = len(sizing.get_serialized_evaluation_keys())
    env = {
        "FHE_SERVER_KEYSTORE_MAX_BYTES": str(key_bytes * 3 // 2),
        "FHE_SERVER_JOB_CONCURRENCY": "1",
        "FHE_SERVER_WORKERS": "1",
    }
    server = ServerProcess(tiny_models, tmp_path / "data", env=env).start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(8)]
    try:
        with FHEServerAPI(server.url) as api:
            victim = EncryptedModel(api, "tiny", tmp_path / "victim")
            entries = submit_items(victim, texts, JobJournal(tmp_path / "victim"))
            victim_key = victim.keys(upload=False).key_id
            other = EncryptedModel(api, "tiny", tmp_path / "other")
            with pytest.raises(ServerError) as full:
                other.keys()
            assert full.value.status == 503 and full.value.code == "key_store_full"
            assert full.value.retry_after is not None
            labels = job_labels(victim, entries)
            assert other.keys().key_id != victim_key
            assert other.predict(SAMPLE_TEXTS[:1])[0].label in other.labels
            keys_dir = tmp_path / "data" / "keys"
            assert sum(p.stat().st_size for p in keys_dir.glob("*.keys")) <= key_bytes * 3 // 2
    finally:
        server.stop()
    assert labels == clear_labels(tiny_bundle, texts)
