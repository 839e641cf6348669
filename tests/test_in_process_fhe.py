"""The in-process tier with real FHE keys: the success paths of the key and encrypted prediction
routes, through FastAPI's TestClient over create_app (real stores, the real FHE worker pool,
the shipped breast-cancer circuit). Keys are generated with the light client (concrete.compiler),
so these tests are marked `fhe`, not `fast`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from client.circuit_client import CircuitClient
from tests.support.in_process import MODELS, in_process, settings_for

pytestmark = pytest.mark.fhe

BUNDLE = MODELS["breast-cancer"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in development mode, once it is ready."""
    with in_process(settings_for(tmp_path_factory.mktemp("in-process-fhe")), set()) as client:
        yield client


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> CircuitClient:
    """The light client of the breast-cancer circuit, its keys generated."""
    codec = CircuitClient(BUNDLE / "client.zip", tmp_path_factory.mktemp("keys"))
    codec.generate_keys(force=False)
    return codec


def test_keys_upload_once_then_encrypted_predictions_and_jobs_agree(
    client: TestClient, codec: CircuitClient
) -> None:
    spec = client.get("/v1/models/breast-cancer/client.zip").headers["X-Client-Spec"]
    keys = codec.generate_keys(force=False)
    key_id = hashlib.sha256(keys).hexdigest()
    first = client.post("/v1/keys", content=keys, headers={"X-Client-Spec": spec})
    assert first.status_code == 201, first.text
    assert first.json()["key_id"] == key_id and first.json()["bytes"] == len(keys)
    again = client.post("/v1/keys", content=keys, headers={"X-Client-Spec": spec})
    assert again.status_code == 200 and again.json()["key_id"] == key_id
    status = client.get(f"/v1/keys/{key_id}")
    assert status.status_code == 200, status.text
    assert status.json()["bytes"] == len(keys) and spec in status.json()["client_specs"]

    rng = np.random.default_rng(0)
    features = rng.uniform(-1, 1, codec.input_shape).astype(np.float32)
    ciphertext = codec.encrypt(codec.quantize(features))
    headers = {"X-Client-Spec": spec, "X-Key-Id": key_id}
    answer = client.post("/v1/models/breast-cancer/predict", content=ciphertext, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    assert float(answer.headers["X-FHE-Seconds"]) > 0
    predicted = codec.decrypt(answer.content)

    submitted = client.post("/v1/models/breast-cancer/jobs", content=ciphertext, headers=headers)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 120
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["status"] == "done", job
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and float(result.headers["X-FHE-Seconds"]) > 0
    np.testing.assert_array_equal(codec.decrypt(result.content), predicted)

    deleted = client.delete(f"/v1/keys/{key_id}")
    assert deleted.status_code == 204
    gone = client.get(f"/v1/keys/{key_id}")
    assert gone.status_code == 404 and gone.json()["code"] == "unknown_key"
    refused = client.post("/v1/models/breast-cancer/predict", content=ciphertext, headers=headers)
    assert refused.status_code == 404 and refused.json()["code"] == "unknown_key"
