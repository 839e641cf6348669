"""What an operator and a returning client see, against a real server: Prometheus metrics after
real FHE and clear predictions, readiness that follows the broker, key status, deletion, and the
client asking before it uploads its keys again."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import free_port
from client.settings import ClientSettings
from tests.conftest import IRIS, SAMPLE_TEXTS, SKLEARN_FIXTURES
from tests.support.local_redis import LocalRedis
from tests.support.local_worker import LocalWorker
from tests.support.server_process import ServerProcess

ALICE, BOB = "alice-token", "bob-token"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name{labels}` in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def server(mixed_models: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    env = {"FHE_SERVER_TOKENS": json.dumps({"alice": ALICE, "bob": BOB})}
    data = tmp_path_factory.mktemp("operations") / "data"
    process = ServerProcess(mixed_models, data, env=env).start()
    yield process
    process.stop()


def client(server: ServerProcess, token: str) -> FHEServerAPI:
    return FHEServerAPI(settings=ClientSettings(server_url=server.url, api_token=token))


def test_metrics_after_real_predictions(server: ServerProcess, tmp_path: Path) -> None:
    with client(server, ALICE) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "alice")
        predictions = remote.predict(SAMPLE_TEXTS[:2])
        assert len(predictions) == 2
        sample = json.loads((SKLEARN_FIXTURES / IRIS / "sample.json").read_text())
        clear = httpx.post(
            f"{server.url}/v1/models/iris/predict",
            json={"inputs": sample["inputs"]},
            headers={"Authorization": f"Bearer {ALICE}"},
            timeout=60,
        )
        assert clear.status_code == 200, clear.text
        info = remote.keys()
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    runs = metric(text, "fhe_run_seconds_count", model="tiny")
    assert runs >= 2
    assert metric(text, "fhe_run_seconds_bucket", model="tiny", le="600.0") == runs
    # Embedded, the API's own pool ran them: each run once as a run, once as a turnaround.
    assert metric(text, "fhe_run_turnaround_seconds_count", model="tiny") == runs
    # What the tiny bundle's card says one run takes, for FheRunSlow.
    assert metric(text, "fhe_model_expected_run_seconds", model="tiny") > 0
    assert metric(text, "fhe_clear_predict_seconds_count", model="iris") == 1
    route = "/v1/models/{name}/predict"
    assert metric(text, "fhe_requests_total", route=route, code="200") >= 3
    assert metric(text, "fhe_request_seconds_count", route=route) >= 3
    assert metric(text, "fhe_key_cache_misses_total") >= 1
    assert metric(text, "fhe_key_cache_hits_total") >= 1, "the second run found no cached key"
    assert metric(text, "fhe_key_checks_total", result="fits") >= 1
    assert metric(text, "fhe_keys") >= 1
    assert metric(text, "fhe_key_store_bytes") >= info.evaluation_key_bytes
    for state in ("queued", "running", "done", "failed"):
        assert f'fhe_jobs{{state="{state}"}}' in text
    assert "fhe_queue_wait_seconds_count" in text
    assert metric(text, "fhe_worker_crashes_total") == 0
    assert "fhe_dead_letters_total" in text
    # Label values are route templates, never the paths callers send.
    httpx.get(f"{server.url}/v1/jobs/{'0' * 32}", headers={"Authorization": f"Bearer {ALICE}"})
    httpx.get(f"{server.url}/no/such/path/{os.urandom(4).hex()}")
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert metric(text, "fhe_requests_total", route="/v1/jobs/{job_id}", code="404") >= 1
    assert metric(text, "fhe_requests_total", route="unmatched", code="404") >= 1
    assert "/no/such/path" not in text


def test_key_status_deletion_and_the_client_asking_before_it_uploads(
    server: ServerProcess, tmp_path: Path
) -> None:
    uploads = functools.partial(uploads_so_far, server)
    with client(server, ALICE) as api:
        first = EncryptedModel(api, "tiny", tmp_path / "alice")
        generated = first.keys()
        assert generated.generated_now and generated.uploaded
        status = api.key_status(generated.key_id)
        assert status is not None and status.held is True
        assert status.bytes == generated.evaluation_key_bytes
        assert status.models == ["tiny"]
        assert status.last_used >= status.created > 0
        before = uploads()
        # A new run with the keys cached asks first and sends nothing when the server holds them.
        again = EncryptedModel(api, "tiny", tmp_path / "alice")
        assert again.predict(SAMPLE_TEXTS[:1])[0].label
        assert uploads() == before, "the evaluation keys were uploaded though the server held them"
        assert again.keys().uploaded is False
    with client(server, BOB) as other:
        assert other.key_status(generated.key_id) is None, "another token saw alice's key"
        refused = httpx.delete(
            f"{server.url}/v1/keys/{generated.key_id}",
            headers={"Authorization": f"Bearer {BOB}"},
        )
        assert refused.status_code == 404 and refused.json()["code"] == "unknown_key"
    with client(server, ALICE) as api:
        api.delete_key(generated.key_id)
        assert api.key_status(generated.key_id) is None
        gone = httpx.post(
            f"{server.url}/v1/models/tiny/predict",
            content=b"x",
            headers={
                "Authorization": f"Bearer {ALICE}",
                "X-Key-Id": generated.key_id,
                "X-Client-Spec": again.client_spec,
            },
        )
        assert gone.status_code == 404 and gone.json()["code"] == "unknown_key"
        # The next run learns the key is gone before sending anything, and uploads it once.
        before = uploads()
        later = EncryptedModel(api, "tiny", tmp_path / "alice")
        assert later.predict(SAMPLE_TEXTS[:1])[0].label
        assert uploads() == before + 1
        assert api.key_status(generated.key_id).held is True


def uploads_so_far(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        metric(text, "fhe_requests_total", route="/v1/keys", code=code) for code in ("200", "201")
    )


@pytest.mark.redis
def test_readiness_follows_the_broker_and_a_worker_serves_its_own_metrics(
    tiny_models: Path, tmp_path: Path
) -> None:
    redis = LocalRedis(tmp_path / "redis").start()
    env = {"FHE_SERVER_BACKEND": "celery", "FHE_SERVER_REDIS_URL": redis.url}
    api = ServerProcess(tiny_models, tmp_path / "api", env=env).start()
    port = free_port()
    worker = LocalWorker(
        redis.url, tiny_models, tmp_path / "w1", "w1", {"FHE_SERVER_WORKER_METRICS_PORT": str(port)}
    ).start()
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            assert remote.predict(SAMPLE_TEXTS[:2])[1].label
        # The run happened in the worker's child process; its main process serves the metrics.
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        served = httpx.get(f"{api.url}/metrics", timeout=10).text
        # Each run is counted once, by the worker that ran it: a dashboard summing every
        # scraped target sees 2 runs, not 4. The API times the same runs end to end instead.
        assert metric(text, "fhe_run_seconds_count", model="tiny") == 2
        assert metric(served, "fhe_run_seconds_count", model="tiny") == 0
        assert metric(served, "fhe_run_turnaround_seconds_count", model="tiny") == 2
        assert metric(text, "fhe_key_cache_hits_total") >= 1
        assert metric(served, "fhe_key_cache_hits_total") == 0
        assert metric(served, "fhe_key_cache_misses_total") == 0
        worker.stop()
        ready = httpx.get(f"{api.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == ["jobs", "keys", "compute", "clear", "circuits"]
        redis.stop()
        down = httpx.get(f"{api.url}/readyz", timeout=30)
        assert down.status_code == 503, down.text
        assert down.json()["code"] == "not_ready" and "compute" in down.json()["checks"]
        assert down.headers["Retry-After"] == "5"
        assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200
        redis.start()
        assert httpx.get(f"{api.url}/readyz", timeout=30).status_code == 200
    finally:
        worker.stop()
        api.stop()
        redis.stop()


@pytest.mark.fast
def test_runs_times_threads_stay_within_the_cores() -> None:
    from server.settings import ServerSettings

    cores = os.cpu_count() or 1
    assert ServerSettings(workers=1).threads_per_run() == cores
    assert ServerSettings(workers=cores).threads_per_run() == 1
    assert ServerSettings(workers=cores * 4).threads_per_run() == 1
    assert ServerSettings(workers=1, fhe_threads=3).threads_per_run() == 3
    default = ServerSettings()
    assert default.workers * default.threads_per_run() <= cores


def test_a_pool_worker_runs_with_the_threads_it_was_given() -> None:
    import asyncio

    from server.compute.local import FHEExecutor

    async def omp_threads() -> str | None:
        pool = FHEExecutor(workers=1, max_queue=1, key_cache_entries=1, threads=1)
        try:
            return await pool.call(functools.partial(os.getenv, "OMP_NUM_THREADS"))
        finally:
            pool.close()

    assert asyncio.run(omp_threads()) == "1"
