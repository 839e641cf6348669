"""Asynchronous jobs on a real server: submit, poll, fetch, callbacks, expiry and restarts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.jobs import JobJournal
from client.local_server import free_port
from fhe.build.recipe import TrainedBundle
from fhe.contract.wire import JobStatus
from server.storage.job import Job, new_job_id
from server.storage.jobs import SqliteJobStore
from tests.conftest import (
    IRIS,
    SAMPLE_TEXTS,
    SKLEARN_FIXTURES,
    clear_labels,
    job_labels,
    run_client,
)
from tests.support.jobs import submit_items
from tests.support.server_process import ServerProcess


def iris_request() -> dict:
    """The iris fixture's sample rows as a request body."""
    return {"inputs": json.loads((SKLEARN_FIXTURES / IRIS / "sample.json").read_text())["inputs"]}


@pytest.fixture
def server(mixed_models: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        "FHE_SERVER_CALLBACK_BACKOFF_SECONDS": "0.2",
        "FHE_SERVER_JOB_TTL_SECONDS": "600",
        "FHE_SERVER_CALLBACK_ALLOW": '["127.0.0.1/32"]',
    }
    process = ServerProcess(mixed_models, tmp_path / "data", env=env).start()
    yield process
    process.stop()


def finished(api: FHEServerAPI, job_id: str, timeout: float = 120) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.job(job_id)
        if status.status in ("done", "failed"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {status}")


@pytest.mark.fast
def test_store_keeps_jobs_and_requeues_interrupted_ones(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path, max_attempts=2)
    job = Job(new_job_id(), "m", "fhe", "queued", time.time(), "http://x/")
    store.add(job, b"ciphertext")
    assert store.input_path(job.job_id).read_bytes() == b"ciphertext"
    claimed = store.claim_next()
    assert claimed is not None and claimed.job_id == job.job_id and claimed.attempts == 1
    assert store.claim_next() is None
    reopened = SqliteJobStore(tmp_path, max_attempts=2)
    assert reopened.requeue_interrupted(ttl=60) == 1
    assert reopened.get(job.job_id).status == "queued"
    reopened.claim_next()
    reopened.requeue_interrupted(ttl=60)
    failed = reopened.get(job.job_id)
    assert failed.status == "failed" and failed.error_code == "interrupted"
    assert not reopened.input_path(job.job_id).exists()


@pytest.mark.fast
def test_store_expires_finished_jobs(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path)
    job = store.add(Job(new_job_id(), "m", "clear", "queued", time.time(), "http://x/"), b"{}")
    store.claim_next()
    store.finish(job.job_id, b"result", "application/json", None, ttl=0.2)
    assert store.get(job.job_id).status == "done"
    time.sleep(0.3)
    assert store.get(job.job_id) is None
    assert store.expire() == 1 and not store.result_path(job.job_id).exists()


def test_encrypted_jobs_decrypt_to_the_clear_labels(
    server: ServerProcess, tiny_bundle: TrainedBundle, tmp_path: Path
) -> None:
    with FHEServerAPI(server.url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "client")
        journal = JobJournal(tmp_path / "client")
        entries = submit_items(remote, SAMPLE_TEXTS, journal)
        assert [e.job_id for e in journal.entries(server.url)] == [e.job_id for e in entries]
        labels = job_labels(remote, entries)
        status = api.job(entries[0].job_id)
    assert labels == clear_labels(tiny_bundle, SAMPLE_TEXTS)
    assert status.status == "done" and status.seconds.fhe > 0
    assert status.started >= status.created and status.finished >= status.started
    assert status.expires == pytest.approx(status.finished + 600, abs=1)


def test_clear_model_job_answers_like_the_native_route(server: ServerProcess) -> None:
    body = iris_request()
    submitted = httpx.post(f"{server.url}/v1/models/iris/jobs", json=body)
    assert submitted.status_code == 202, submitted.text
    assert submitted.headers["location"] == f"{server.url}/v1/jobs/{submitted.json()['job_id']}"
    with FHEServerAPI(server.url) as api:
        assert finished(api, submitted.json()["job_id"]).status == "done"
    result = httpx.get(submitted.json()["result_url"])
    native = httpx.post(f"{server.url}/v1/models/iris/predict", json=body)
    assert result.status_code == 200 and result.json() == native.json()
    assert result.json()["output"] == [0, 1, 2, 0, 1]


def test_bad_submissions_are_refused_at_once(server: ServerProcess, tmp_path: Path) -> None:
    url = server.url
    with FHEServerAPI(url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "client")
        key_id = remote.keys().key_id
        spec = remote.client_spec
    fhe_headers = {"X-Key-Id": key_id, "X-Client-Spec": spec}
    cases = [
        ("/v1/models/nope/jobs", b"x", fhe_headers, 404, "unknown_model"),
        ("/v1/models/tiny/jobs", b"x", {"X-Client-Spec": spec}, 400, "missing_key_id"),
        ("/v1/models/tiny/jobs", b"x", {**fhe_headers, "X-Client-Spec": "0" * 64}, 409, None),
        ("/v1/models/tiny/jobs", b"", fhe_headers, 400, "empty_body"),
        ("/v1/models/tiny/jobs", b"x", {**fhe_headers, "X-Callback-Url": "ftp://h/"}, 400, None),
        ("/v1/models/iris/jobs", b"not json", {}, 400, "invalid_inputs"),
    ]
    for path, body, headers, status, code in cases:
        response = httpx.post(f"{url}{path}", content=body, headers=headers)
        assert response.status_code == status, (path, headers, response.text)
        if code:
            assert response.json()["code"] == code
    unknown = httpx.get(f"{url}/v1/jobs/{'0' * 32}")
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_job"
    assert httpx.get(f"{url}/v1/jobs/not-an-id/result").status_code == 404
    assert httpx.get(f"{url}/v1/jobs").json()["jobs"] == []


def test_malformed_ciphertext_fails_the_job_not_the_server(
    server: ServerProcess, tmp_path: Path
) -> None:
    with FHEServerAPI(server.url) as api:
        remote = EncryptedModel(api, "tiny", tmp_path / "client")
        key_id = remote.keys().key_id
        job = api.submit_job("tiny", b"\x00" * 100, key_id, remote.client_spec)
        status = finished(api, job.job_id)
        assert status.status == "failed"
        assert status.error.code in ("malformed_ciphertext", "unprocessable_ciphertext")
        result = httpx.get(job.result_url)
        assert result.status_code == 409 and result.json()["code"] == "job_failed"
        good = remote.predict(SAMPLE_TEXTS[:1])
    assert good[0].label in remote.labels


class CallbackReceiver:
    """A loopback HTTP server that records callback bodies; the first `refuse` calls get 500."""

    def __init__(self, refuse: int = 0) -> None:
        self.bodies: list[dict] = []
        self.refuse = refuse
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.bodies.append(body)
                self.send_response(500 if len(receiver.bodies) <= receiver.refuse else 204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.http = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()


def test_callback_is_retried_until_delivered(server: ServerProcess) -> None:
    receiver = CallbackReceiver(refuse=2)
    try:
        body = iris_request()
        job = httpx.post(
            f"{server.url}/v1/models/iris/jobs", json=body, headers={"X-Callback-Url": receiver.url}
        ).json()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(receiver.bodies) < 3:
            time.sleep(0.1)
        with FHEServerAPI(server.url) as api:
            callback = api.job(job["job_id"]).callback
    finally:
        receiver.close()
    assert len(receiver.bodies) == 3
    assert all(b["job_id"] == job["job_id"] and b["status"] == "done" for b in receiver.bodies)
    assert receiver.bodies[0]["result_url"] == job["result_url"]
    assert callback is not None and callback.model_dump() == {
        "url": receiver.url,
        "attempts": 3,
        "delivered": True,
        "last_error": None,
    }


def test_jobs_survive_a_killed_server(
    mixed_models: Path, tiny_bundle: TrainedBundle, tmp_path: Path
) -> None:
    """SIGKILL the server with jobs queued and running: after a restart every job finishes."""
    process = ServerProcess(mixed_models, tmp_path / "data").start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(12)]
    try:
        with FHEServerAPI(process.url) as api:
            remote = EncryptedModel(api, "tiny", tmp_path / "client")
            entries = submit_items(remote, texts, JobJournal(tmp_path / "client"))
            statuses = {api.job(e.job_id).status for e in entries}
        assert statuses & {"queued", "running"}, statuses
        process.kill()
        process.start()
        with FHEServerAPI(process.url) as api:
            remote = EncryptedModel(api, "tiny", tmp_path / "client")
            labels = job_labels(remote, entries)
            attempts = [api.job(e.job_id).attempts for e in entries]
    finally:
        process.stop()
    assert labels == clear_labels(tiny_bundle, texts)
    assert all(1 <= a <= 2 for a in attempts)


def test_cli_async_predict_jobs_and_result(
    server: ServerProcess, tiny_bundle: TrainedBundle, client_env: dict[str, str]
) -> None:
    url = ["--server", server.url]
    texts = SAMPLE_TEXTS[:2]
    waited = run_client(
        ["predict", "--model", "tiny", "--async", "--json", *url, *texts], client_env
    )
    assert waited.returncode == 0, waited.stderr
    labels = [json.loads(line)["label"] for line in waited.stdout.splitlines()]
    assert sorted(labels) == sorted(clear_labels(tiny_bundle, texts))
    queued = run_client(
        ["predict", "--model", "tiny", "--async", "--no-wait", *url, texts[0]], client_env
    )
    assert queued.returncode == 0, queued.stderr
    job_id = queued.stdout.strip()
    assert len(job_id) == 32
    with FHEServerAPI(server.url) as api:
        finished(api, job_id)
    listing = run_client(["jobs", "--json", *url], client_env)
    assert listing.returncode == 0, listing.stderr
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert len(rows) == 3 and {row["status"] for row in rows} == {"done"}
    assert rows[-1]["job_id"] == job_id and rows[-1]["model"] == "tiny"
    table = run_client(["jobs", *url], client_env)
    assert table.returncode == 0 and job_id in table.stdout
    fetched = run_client(["result", job_id, "--json", *url], client_env)
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["label"] == clear_labels(tiny_bundle, texts[:1])[0]
    unknown = run_client(["result", "f" * 32, *url], client_env)
    assert unknown.returncode == 1 and "not submitted from this client" in unknown.stderr
