"""The in-process tier: every route of the app, through FastAPI's TestClient over create_app with
real stores (the embedded backend in a temporary directory), the real FHE and clear worker pools
and small real circuits (the shipped breast-cancer and sentiment-linear bundles, the iris
scikit-learn fixture). No server process, no FHE keys, no browser: `make test-fast` runs it.

Answers are checked with their exact status and code. The last test fails when a route of the
OpenAPI schema was reached by none of the tests before it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fhe.contract.callback_signature import ALGORITHM, SIGNATURE_HEADER
from server.app import create_app
from tests.support.in_process import (
    MODELS,
    in_process,
    openapi_operations,
    settings_for,
)

pytestmark = pytest.mark.fast

REACHED: set[tuple[str, str]] = set()
"""(METHOD, path template) of every request the in-process apps of this module routed."""

IRIS_SAMPLE = json.loads((MODELS["iris"] / "sample.json").read_text())
IRIS_BODY = {"inputs": IRIS_SAMPLE["inputs"]}
UNKNOWN_ID = "0" * 64
TOKENS = {"alice": "alice-token", "bob": "bob-token"}
METRICS_TOKEN = "metrics-token"


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of an API token."""
    return {"Authorization": f"Bearer {token}"}


def refused(response: object, status: int, code: str) -> dict:
    """The error body of `response`, after checking its exact status and stable code."""
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["code"] == code, body
    assert body["error"], body
    return body


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in development mode (no tokens), once it is ready."""
    settings = settings_for(tmp_path_factory.mktemp("in-process"))
    with in_process(settings, REACHED) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app with two API tokens, a metrics token and single-model mode on the iris model."""
    settings = settings_for(
        tmp_path_factory.mktemp("in-process-guarded"),
        tokens=TOKENS,
        metrics_token=METRICS_TOKEN,
        task="tabular-classification",
        model_id=str(MODELS["iris"]),
    )
    with in_process(settings, REACHED) as client:
        yield client


def test_probes_metrics_and_the_token_check(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": ["jobs", "keys", "compute", "clear", "circuits"],
    }
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "fhe_" in metrics.text
    checked = client.get("/v1/auth")
    assert checked.status_code == 204 and checked.content == b""


def test_tokens_guard_the_api_and_the_metrics_token_guards_metrics(guarded: TestClient) -> None:
    assert guarded.get("/healthz").status_code == 200  # probes carry no token
    assert guarded.get("/readyz").status_code == 200
    missing = refused(guarded.get("/v1/auth"), 401, "unauthorized")
    assert "Authorization: Bearer" in missing["error"]
    assert guarded.get("/v1/auth", headers=bearer("nobody")).status_code == 401
    assert guarded.get("/v1/auth", headers=bearer(TOKENS["alice"])).status_code == 204
    refused(guarded.get("/v1/models"), 401, "unauthorized")
    refused(guarded.get("/metrics"), 401, "unauthorized")
    refused(guarded.get("/metrics", headers=bearer(TOKENS["alice"])), 401, "unauthorized")
    metrics = guarded.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert metrics.status_code == 200 and "fhe_" in metrics.text


def test_the_model_listing_and_cards(client: TestClient) -> None:
    listing = client.get("/v1/models")
    assert listing.status_code == 200
    models = {model["name"]: model for model in listing.json()["models"]}
    assert set(models) == set(MODELS)
    assert {name: m["kind"] for name, m in models.items()} == {
        "breast-cancer": "fhe",
        "sentiment-linear": "fhe",
        "iris": "clear",
    }
    assert all(model["status"] == "ready" for model in models.values()), models
    card = client.get("/v1/models/breast-cancer")
    assert card.status_code == 200 and card.json()["name"] == "breast-cancer"
    missing = refused(client.get("/v1/models/nope"), 404, "unknown_model")
    assert "'nope'" in missing["error"]


def client_spec(client: TestClient, name: str) -> str:
    """The client spec hash of an FHE model, as its client.zip route announces it."""
    spec = client.get(f"/v1/models/{name}/client.zip").headers["X-Client-Spec"]
    assert spec
    return spec


def test_client_zip_is_the_bundles_file_with_its_spec(client: TestClient) -> None:
    answer = client.get("/v1/models/breast-cancer/client.zip")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    assert answer.content == (MODELS["breast-cancer"] / "client.zip").read_bytes()
    assert (
        answer.headers["X-Client-Spec"]
        == client.get("/v1/models/breast-cancer").json()["client_spec_sha256"]
    )
    refused(client.get("/v1/models/iris/client.zip"), 400, "not_fhe")
    refused(client.get("/v1/models/nope/client.zip"), 404, "unknown_model")


@pytest.mark.parametrize(
    ("route", "has_it", "lacks_it", "code"),
    [
        ("embedder-delta", "sentiment-linear", "breast-cancer", "no_embedder_delta"),
        ("embedder-onnx", "sentiment-linear", "breast-cancer", "no_embedder_export"),
        ("tokenizer", "sentiment-linear", "breast-cancer", "no_embedder_export"),
        ("projection", "sentiment-linear", "breast-cancer", "no_projection"),
        ("preprocessing", "breast-cancer", "sentiment-linear", "no_preprocessing"),
        ("preprocessing.json", "breast-cancer", "sentiment-linear", "no_preprocessing"),
    ],
)
def test_client_files_carry_their_sha256_or_say_the_model_has_none(
    client: TestClient, route: str, has_it: str, lacks_it: str, code: str
) -> None:
    answer = client.get(f"/v1/models/{has_it}/{route}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Content-SHA256"] == hashlib.sha256(answer.content).hexdigest()
    shipped = {path.read_bytes() for path in MODELS[has_it].iterdir() if path.is_file()}
    assert answer.content in shipped
    refused(client.get(f"/v1/models/{lacks_it}/{route}"), 404, code)
    refused(client.get(f"/v1/models/iris/{route}"), 400, "not_fhe")


def test_a_clear_prediction_and_its_refusals(client: TestClient) -> None:
    answer = client.post("/v1/models/iris/predict", json=IRIS_BODY)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"output": IRIS_SAMPLE["expected"], "warnings": []}
    shapeless = refused(
        client.post("/v1/models/iris/predict", json={"inputs": 3}), 400, "prediction_failed"
    )
    assert "tabular tasks take `inputs`" in shapeless["error"]
    refused(client.post("/v1/models/iris/predict", content=b"{not json"), 400, "invalid_inputs")
    refused(client.post("/v1/models/nope/predict", json=IRIS_BODY), 404, "unknown_model")


def test_an_encrypted_prediction_is_checked_before_any_fhe(client: TestClient) -> None:
    """The header checks of an FHE prediction, cheapest first, each with its exact answer."""
    url = "/v1/models/breast-cancer/predict"
    spec = client_spec(client, "breast-cancer")
    refused(client.post(url, content=b"x"), 400, "missing_client_spec")
    refused(
        client.post(url, content=b"x", headers={"X-Client-Spec": "f" * 64}),
        409,
        ("client_spec_mismatch"),
    )
    refused(client.post(url, content=b"x", headers={"X-Client-Spec": spec}), 400, "missing_key_id")
    unknown = {"X-Client-Spec": spec, "X-Key-Id": UNKNOWN_ID}
    refused(client.post(url, content=b"x", headers=unknown), 404, "unknown_key")


def test_key_uploads_are_checked_by_a_real_worker(client: TestClient) -> None:
    refused(client.post("/v1/keys", content=b"\x02" * 4096), 400, "malformed_keys")
    spec = client_spec(client, "breast-cancer")
    refused(
        client.post("/v1/keys", content=b"\x02" * 4096, headers={"X-Client-Spec": spec}),
        400,
        "malformed_keys",
    )
    refused(
        client.post("/v1/keys", content=b"\x02", headers={"X-Client-Spec": "f" * 64}),
        409,
        "unknown_client_spec",
    )
    refused(client.get(f"/v1/keys/{UNKNOWN_ID}"), 404, "unknown_key")
    refused(client.delete(f"/v1/keys/{UNKNOWN_ID}"), 404, "unknown_key")
    assert list((client_data(client) / "keys").glob("upload-*")) == []


def client_data(client: TestClient) -> Path:
    """The data directory of the app behind `client`."""
    return client.app.app.state.settings.data_dir  # type: ignore[attr-defined]


def finished(client: TestClient, job_id: str, within: float = 60) -> dict:
    """A job's status once it is done or failed."""
    deadline = time.monotonic() + within
    while (status := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def test_a_clear_job_from_submission_to_deletion(client: TestClient) -> None:
    submitted = client.post("/v1/models/iris/jobs", json=IRIS_BODY)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    assert submitted.headers["Location"].endswith(f"/v1/jobs/{job_id}")
    assert finished(client, job_id)["status"] == "done"
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and result.headers["X-Job-Id"] == job_id
    assert result.json() == {"output": IRIS_SAMPLE["expected"], "warnings": []}
    listed = client.get("/v1/jobs")
    assert listed.status_code == 200
    assert job_id in [job["job_id"] for job in listed.json()["jobs"]]
    deleted = client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    refused(client.get(f"/v1/jobs/{job_id}"), 404, "unknown_job")
    refused(client.get(f"/v1/jobs/{job_id}/result"), 404, "unknown_job")
    refused(client.delete(f"/v1/jobs/{job_id}"), 404, "unknown_job")


def test_jobs_are_refused_as_predict_would_be_at_once(client: TestClient) -> None:
    refused(client.post("/v1/models/iris/jobs", content=b"{not json"), 400, "invalid_inputs")
    # A body that parses is accepted; the model's refusal of its shape ends the job.
    accepted = client.post("/v1/models/iris/jobs", json={"inputs": 3})
    assert accepted.status_code == 202, accepted.text
    failed = finished(client, accepted.json()["job_id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "prediction_failed"
    refused(client.get(f"/v1/jobs/{accepted.json()['job_id']}/result"), 409, "job_failed")
    refused(client.post("/v1/models/nope/jobs", json=IRIS_BODY), 404, "unknown_model")
    spec = client_spec(client, "breast-cancer")
    refused(
        client.post("/v1/models/breast-cancer/jobs", content=b"x", headers={"X-Client-Spec": spec}),
        400,
        "missing_key_id",
    )


def test_validation_errors_are_422_invalid_request(client: TestClient) -> None:
    for limit in ("0", "1001", "many"):
        body = refused(client.get("/v1/jobs", params={"limit": limit}), 422, "invalid_request")
        assert "limit" in json.dumps(body["error"])
    assert client.get("/v1/jobs", params={"limit": "1"}).status_code == 200


def test_each_token_sees_its_own_jobs_and_callback_secret(guarded: TestClient) -> None:
    alice, bob = bearer(TOKENS["alice"]), bearer(TOKENS["bob"])
    submitted = guarded.post("/v1/models/iris/jobs", json=IRIS_BODY, headers=alice)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    refused(guarded.get(f"/v1/jobs/{job_id}", headers=bob), 404, "unknown_job")
    assert guarded.get("/v1/jobs", headers=bob).json() == {"jobs": []}
    assert guarded.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    secrets = {}
    for name, headers in (("alice", alice), ("bob", bob)):
        answer = guarded.get("/v1/callback-secret", headers=headers)
        assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
        body = answer.json()
        assert body["algorithm"] == ALGORITHM and body["header"] == SIGNATURE_HEADER
        secrets[name] = body["secret"]
    assert secrets["alice"] != secrets["bob"] and secrets["alice"].startswith("whsec_")
    refused(guarded.get("/v1/callback-secret"), 401, "unauthorized")


def test_the_compatible_routes_answer_as_api_inference_community(
    client: TestClient, guarded: TestClient
) -> None:
    assert client.get("/").json() == {"ok": "ok"}
    answer = client.post("/models/iris", json=IRIS_BODY)
    assert answer.status_code == 200, answer.text
    assert answer.json() == IRIS_SAMPLE["expected"]
    assert answer.headers["x-compute-type"] == "cpu"
    assert float(answer.headers["x-compute-time"]) >= 0
    bad = client.post("/models/iris", content=b"\xc3\x28")
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    fhe = client.post("/models/breast-cancer", json=IRIS_BODY)
    assert fhe.status_code == 404
    assert fhe.json() == {"error": "no clear model named 'breast-cancer'"}
    off = client.post("/", json=IRIS_BODY)
    assert off.status_code == 404 and "single-model mode is off" in off.json()["error"]
    single = guarded.post("/", json=IRIS_BODY, headers=bearer(TOKENS["bob"]))
    assert single.status_code == 200, single.text
    assert single.json() == IRIS_SAMPLE["expected"]


def test_every_route_of_the_openapi_schema_has_an_in_process_test(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Runs last in this module: every (method, path) of /openapi.json was reached above."""
    others = {item.nodeid for item in request.session.items if item.module is request.module}
    everything = {
        f"{request.node.nodeid.split('::')[0]}::{name}"
        for name, value in vars(request.module).items()
        if name.startswith("test_") and callable(value)
    }
    ran = {nodeid.split("[")[0] for nodeid in others}
    if ran != everything:
        pytest.skip("the route check needs every test of this module (run the whole file)")
    operations = openapi_operations(create_app(settings_for(tmp_path)))
    assert len(operations) >= 20, operations  # the schema itself was read
    missing = sorted(operations - REACHED)
    assert not missing, f"routes no in-process test reaches: {missing}"
    assert operations >= REACHED, sorted(REACHED - operations)
