"""The images built here and the compose stack started for real (`make image-test`).

`make base-image images` builds the Debian base, the server and the client images with podman (or
docker); deployment/compose.yaml then runs Postgres, Redis, two API replicas, a Celery worker,
nginx, the demo and Prometheus, with the official third-party images where they can be pulled and
Debian stand-ins elsewhere. Everything goes through nginx on loopback: a key upload, encrypted
predictions answered by each replica, a clear prediction, asynchronous jobs that finish after the
replica that accepted them is killed, the demo page; Prometheus scrapes every replica and the
worker and loads the alert rules. Sizes and times go to test-artifacts/image-test.json.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.jobs import JobJournal, fetch_prediction
from client.local_server import free_port
from tests.conftest import REPO, SAMPLE_TEXTS
from tests.support.compose_stack import (
    ComposeStack,
    engine,
    engine_env,
    image_mb,
    third_party_images,
)
from tests.support.jobs import submit_items, wait_for

pytestmark = pytest.mark.images

SERVER_IMAGE = "localhost/fhe-server:latest"
CLIENT_IMAGE = "localhost/fhe-client:latest"
MAX_SERVER_MB = 1200
MAX_CLIENT_MB = 1000
ARTIFACT = REPO / "test-artifacts" / "image-test.json"
REPORT: dict = {}


def _record(**values: object) -> None:
    REPORT.update(values)
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(REPORT, indent=2) + "\n")
    print(json.dumps(values))


def _make(*targets: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        ["make", "-C", str(REPO), *targets],
        capture_output=True,
        text=True,
        timeout=3600,
        env=engine_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    print(done.stdout[-2000:])
    return time.monotonic() - started


@pytest.fixture(scope="module")
def built() -> dict:
    """The base image, then the server and client images, each timed."""
    base = _make("base-image")
    images = _make("images")
    sizes = {"server_mb": image_mb(SERVER_IMAGE), "client_mb": image_mb(CLIENT_IMAGE)}
    _record(engine=engine(), base_image_seconds=base, images_seconds=images, **sizes)
    return sizes


def _wait(url: str, timeout: float, expect: int = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(url, timeout=5)
            if answer.status_code == expect:
                return answer
            last = f"{answer.status_code} {answer.text[:300]}"
        except httpx.TransportError as error:
            last = error
        time.sleep(1)
    raise AssertionError(f"{url} did not answer {expect} within {timeout:g} s: {last}")


@pytest.fixture(scope="module")
def stack(built: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The compose stack on loopback ports, ready through nginx; removed afterwards."""
    scratch = tmp_path_factory.mktemp("stack")
    config = (REPO / "deployment" / "monitoring" / "prometheus.yml").read_text()
    fast = scratch / "prometheus.yml"  # scraped every 2 s instead of 15, for the test's sake
    fast.write_text(
        re.sub(r"(scrape|evaluation|refresh)_interval: 15s", r"\1_interval: 2s", config)
    )
    ports = {"api": free_port(), "demo": free_port(), "prometheus": free_port()}
    token = secrets.token_hex(24)
    env = {
        "FHE_API_TOKEN": token,
        "FHE_DB_PASSWORD": secrets.token_hex(16),
        "FHE_CALLBACK_SIGNING_KEY": secrets.token_hex(32),
        "FHE_REDIS_PASSWORD": secrets.token_hex(24),
        "FHE_PUBLISH_ADDRESS": "127.0.0.1",
        "FHE_API_PORT": str(ports["api"]),
        "FHE_DEMO_PORT": str(ports["demo"]),
        "FHE_PROMETHEUS_PORT": str(ports["prometheus"]),
        "FHE_PROMETHEUS_CONFIG": str(fast),
        "FHE_JOB_LEASE_SECONDS": "10",
        "FHE_SERVER_IMAGE": SERVER_IMAGE,
        "FHE_CLIENT_IMAGE": CLIENT_IMAGE,
        **third_party_images(),
    }
    compose = ComposeStack("fhe-image-test", env)
    compose.down()  # what an interrupted earlier run left
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    started = time.monotonic()
    try:
        compose.up()
        _wait(f"{urls['api']}/readyz", 600)
        images = {name: value for name, value in env.items() if name.endswith("_IMAGE")}
        _record(stack_ready_seconds=time.monotonic() - started, images=images)
        yield {"compose": compose, "urls": urls, "token": token, "client": scratch / "client"}
    finally:
        for service in ("api", "worker", "proxy"):
            for name in compose.containers(service):
                (scratch / f"{name}.log").write_text(compose.logs(name))
        compose.down()


def test_the_images_are_small(built: dict) -> None:
    assert built["server_mb"] <= MAX_SERVER_MB, built
    assert built["client_mb"] <= MAX_CLIENT_MB, built


def _answered_by(compose: ComposeStack, pattern: str) -> dict[str, int]:
    """How many requests matching `pattern` each API replica's access log shows."""
    return {
        name: len(re.findall(pattern, compose.logs(name))) for name in compose.containers("api")
    }


def test_encrypted_predictions_through_nginx_reach_both_replicas(stack: dict) -> None:
    compose: ComposeStack = stack["compose"]
    with FHEServerAPI(stack["urls"]["api"], token=stack["token"]) as api:
        remote = EncryptedModel(api, "sentiment-linear", stack["client"])
        first = remote.predict(SAMPLE_TEXTS * 2)
    labels = [p.label for p in first]
    assert labels[:5] == labels[5:] and set(labels) <= set(remote.labels)
    answered = _answered_by(compose, r'"POST /v1/models/sentiment-linear/predict HTTP/1.1" 200')
    _record(predictions_by_replica=answered)
    assert len(answered) == 2 and all(count > 0 for count in answered.values()), answered


def test_a_clear_prediction_through_nginx(stack: dict) -> None:
    row = {"age": 0.03, "sex": 0.05, "bmi": 0.06, "bp": 0.02} | {f"s{i}": 0.0 for i in range(1, 7)}
    answer = httpx.post(
        f"{stack['urls']['api']}/v1/models/diabetes-clear/predict",
        json={"inputs": {"data": {k: [v] for k, v in row.items()}}},
        headers={"Authorization": f"Bearer {stack['token']}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["output"][0], float)


def test_the_demo_page_through_nginx(stack: dict) -> None:
    page = _wait(stack["urls"]["demo"] + "/", 180)
    assert "gradio" in page.text.lower()


def test_prometheus_scrapes_every_replica_and_the_worker_and_loads_the_rules(
    stack: dict,
) -> None:
    prometheus = stack["urls"]["prometheus"]
    deadline = time.monotonic() + 120
    while True:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]
        active = targets["activeTargets"]
        jobs = [t["labels"]["job"] for t in active]
        if (
            jobs.count("fhe-api") == 2
            and jobs.count("fhe-worker") == 1
            and all(t["health"] == "up" for t in active)
        ):
            break
        assert time.monotonic() < deadline, [(t["scrapeUrl"], t["health"]) for t in active]
        time.sleep(2)
    query = {"query": "sum(fhe_run_seconds_count)"}
    deadline = time.monotonic() + 60
    while True:
        result = httpx.get(f"{prometheus}/api/v1/query", params=query, timeout=10).json()
        runs = float(result["data"]["result"][0]["value"][1]) if result["data"]["result"] else 0
        if runs > 0:
            break
        assert time.monotonic() < deadline, result
        time.sleep(2)
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    alerts = {rule["name"] for group in rules for rule in group["rules"]}
    shipped = set(
        re.findall(r"- alert: (\w+)", (REPO / "deployment/monitoring/alerts.yml").read_text())
    )
    assert shipped and shipped <= alerts
    _record(prometheus_targets=len(active), fhe_run_seconds_count=runs)


def test_jobs_finish_after_redis_is_killed_mid_run(stack: dict) -> None:
    """Redis (the broker) SIGKILLed while jobs run and started again 5 s later: every job
    still ends done with the right label (runs it lost are sent again)."""
    compose: ComposeStack = stack["compose"]
    [redis] = compose.containers("redis")
    with FHEServerAPI(stack["urls"]["api"], token=stack["token"]) as api:
        remote = EncryptedModel(api, "sentiment", stack["client"])
        texts = SAMPLE_TEXTS[:6]
        expected = [p.label for p in remote.predict(texts)]
        entries = submit_items(remote, texts, JobJournal(stack["client"] / "redis-jobs"))
        unfinished = sum(api.job(e.job_id).status not in ("done", "failed") for e in entries)
        compose.kill(redis)
        time.sleep(5)  # down for a while, then back (with its append-only file) as a restart
        compose.start(redis)
        results = {
            entry.job_id: fetch_prediction(remote, entry, status)
            for entry, status in wait_for(remote, entries)
        }
    labels = [results[e.job_id].label for e in entries]
    _record(unfinished_when_redis_killed=unfinished)
    assert unfinished > 0
    assert labels == expected


def test_jobs_finish_after_the_replica_that_accepted_them_is_killed(stack: dict) -> None:
    """Run last: it kills an API replica (compose restarts it)."""
    compose: ComposeStack = stack["compose"]
    with FHEServerAPI(stack["urls"]["api"], token=stack["token"]) as api:
        remote = EncryptedModel(api, "sentiment", stack["client"])
        expected = [p.label for p in remote.predict(SAMPLE_TEXTS[:4])]
        before = _answered_by(compose, r'"POST /v1/models/sentiment/jobs HTTP/1.1" 202')
        entries = submit_items(remote, SAMPLE_TEXTS[:4], JobJournal(stack["client"] / "jobs"))
        after = _answered_by(compose, r'"POST /v1/models/sentiment/jobs HTTP/1.1" 202')
        accepted = {name: after[name] - before.get(name, 0) for name in after}
        victim = max(accepted, key=lambda name: accepted[name])
        unfinished = sum(api.job(e.job_id).status not in ("done", "failed") for e in entries)
        compose.kill(victim)
        results = {
            entry.job_id: fetch_prediction(remote, entry, status)
            for entry, status in wait_for(remote, entries)
        }
    labels = [results[e.job_id].label for e in entries]
    _record(jobs_accepted_by=accepted, killed=victim, unfinished_when_killed=unfinished)
    assert accepted[victim] > 0 and unfinished > 0
    assert labels == expected
