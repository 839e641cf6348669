"""Hostile JSON bodies on every route that parses one: each is a 400 with a message, never a 500.

A real fhe-server serves two clear scikit-learn fixtures (no FHE bundle, so nothing is trained):
iris for classification and a linear regression whose output overflows on extreme inputs.
Every body goes to the native predict route, the Hugging Face compatible route and the jobs
route; the server must keep serving and log no traceback.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import IRIS, SKLEARN_FIXTURES
from tests.support.server_process import ServerProcess

REGRESSION = "tabular-regression-linear-skops-sk1.5.0"
IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
DEPTH = 10_000
DIGITS = 5_000


def iris_body(value: str) -> bytes:
    """A valid iris request whose first column holds `value`, a raw JSON literal."""
    data = ", ".join(f'"{column}": [1.0]' for column in IRIS_COLUMNS[1:])
    return f'{{"inputs": {{"data": {{"{IRIS_COLUMNS[0]}": [{value}], {data}}}}}}}'.encode()


HOSTILE_BODIES: dict[str, bytes] = {
    "nested arrays": b'{"inputs": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
    "nested objects": b'{"inputs": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}",
    "nested bare array": b"[" * DEPTH + b"]" * DEPTH,
    "huge integer": iris_body("9" * DIGITS),
    "huge negative integer": iris_body("-" + "1" * DIGITS),
    "invalid UTF-8": b'{"inputs": "\xff\xfe caf\xe9"}',
    "lone surrogate": b'{"inputs": "text \\ud800 here"}',
    "lone surrogate key": b'{"inputs": {"data": {"\\udfff": [1]}}}',
}
"""Bodies the JSON parser itself refuses or cannot turn into text; reused by the schema fuzz."""

EXPECTED_MESSAGES = {
    "nested arrays": "too deeply",
    "nested objects": "too deeply",
    "nested bare array": "too deeply",
    "huge integer": "digits",
    "huge negative integer": "digits",
    "invalid UTF-8": "UTF-8",
    "lone surrogate": "surrogate",
    "lone surrogate key": "surrogate",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """fhe-server over the clear iris and regression fixtures only."""
    root = tmp_path_factory.mktemp("hostile-json")
    shutil.copytree(SKLEARN_FIXTURES / IRIS, root / "models" / "iris")
    shutil.copytree(SKLEARN_FIXTURES / REGRESSION, root / "models" / "regression")
    process = ServerProcess(root / "models", root / "data").start()
    yield process
    process.stop()


def post(server: ServerProcess, path: str, body: bytes) -> httpx.Response:
    """POST raw bytes as JSON."""
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=60)


def finished_job(server: ServerProcess, job_id: str) -> dict:
    """The status of a job once it is done or failed (at most 30 s)."""
    deadline = time.monotonic() + 30
    status = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
    while status["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {status}"
        time.sleep(0.1)
        status = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
    return status


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_native_predict_refuses_with_invalid_inputs(server: ServerProcess, name: str) -> None:
    response = post(server, "/v1/models/iris/predict", HOSTILE_BODIES[name])
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_inputs"
    assert EXPECTED_MESSAGES[name] in response.json()["error"]


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_compatible_route_refuses_with_only_an_error(server: ServerProcess, name: str) -> None:
    response = post(server, "/models/iris", HOSTILE_BODIES[name])
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"], "api-inference-community's shape: only `error`"
    assert EXPECTED_MESSAGES[name].lower() in response.json()["error"].lower()


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_jobs_route_refuses_before_queueing(server: ServerProcess, name: str) -> None:
    before = len(httpx.get(f"{server.url}/v1/jobs", timeout=10).json()["jobs"])
    response = post(server, "/v1/models/iris/jobs", HOSTILE_BODIES[name])
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_inputs"
    assert EXPECTED_MESSAGES[name] in response.json()["error"]
    assert len(httpx.get(f"{server.url}/v1/jobs", timeout=10).json()["jobs"]) == before


def test_nesting_the_parser_takes_is_still_a_400(server: ServerProcess) -> None:
    """Just under the parser's limit the body parses; the model then refuses the shape."""
    column = "[" * 900 + "1" + "]" * 900
    data = ", ".join(f'"{c}": [{column}]' for c in IRIS_COLUMNS)
    body = f'{{"inputs": {{"data": {{{data}}}}}}}'.encode()
    native = post(server, "/v1/models/iris/predict", body)
    assert native.status_code == 400 and native.json()["code"] in (
        "invalid_inputs",
        "prediction_failed",
    )
    assert post(server, "/models/iris", body).status_code == 400


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_a_prediction_error(server: ServerProcess, literal: str) -> None:
    """Python's parser takes NaN and turns 1e999 into infinity; the model refuses both (400)."""
    body = iris_body(literal)
    native = post(server, "/v1/models/iris/predict", body)
    assert native.status_code == 400, native.text
    assert native.json()["code"] == "prediction_failed"
    assert "NaN" in native.json()["error"] or "infinity" in native.json()["error"]
    compatible = post(server, "/models/iris", body)
    assert compatible.status_code == 400 and "error" in compatible.json()
    job = post(server, "/v1/models/iris/jobs", body)
    assert job.status_code == 202, job.text
    failed = finished_job(server, job.json()["job_id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "prediction_failed"


def test_an_output_json_cannot_carry_is_a_prediction_error(server: ServerProcess) -> None:
    """A linear regression overflows to infinity on 1e306: 400, not a 500 from the encoder."""
    columns = json.loads((SKLEARN_FIXTURES / REGRESSION / "config.json").read_text())["sklearn"][
        "columns"
    ]
    body = json.dumps({"inputs": {"data": {c: [1e306] for c in columns}}}).encode()
    native = post(server, "/v1/models/regression/predict", body)
    assert native.status_code == 400, native.text
    assert native.json()["code"] == "prediction_failed"
    assert "NaN or infinity" in native.json()["error"]
    compatible = post(server, "/models/regression", body)
    assert compatible.status_code == 400, compatible.text
    assert "NaN or infinity" in compatible.json()["error"]
    job = post(server, "/v1/models/regression/jobs", body)
    assert job.status_code == 202, job.text
    failed = finished_job(server, job.json()["job_id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "prediction_failed"


def test_surrogate_pairs_and_large_finite_numbers_still_work(server: ServerProcess) -> None:
    """What the checks must not refuse: an escaped emoji (a valid pair) and 1e300."""
    body = iris_body("1e300").replace(b'{"data"', b'{"note": "\\ud83d\\ude00", "data"', 1)
    response = post(server, "/v1/models/iris/predict", body)
    assert response.status_code == 200, response.text
    assert response.json()["output"] in ([0], [1], [2])
    compatible = post(server, "/models/iris", iris_body("5.1"))
    assert compatible.status_code == 200 and len(compatible.json()) == 1, compatible.text


def test_the_server_kept_serving_and_logged_no_traceback(server: ServerProcess) -> None:
    for name, body in HOSTILE_BODIES.items():
        for path in ("/v1/models/iris/predict", "/models/iris", "/v1/models/iris/jobs"):
            assert post(server, path, body).status_code < 500, (name, path)
    assert server.alive()
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert server.log is not None
    assert "Traceback" not in server.log.read_text(errors="replace")


def test_compatible_route_speaks_like_api_inference_community(server: ServerProcess) -> None:
    """Python's own decoding message for a body that is not UTF-8, and the compute headers,
    exposed to browsers, on every answer of the compatible routes."""
    bad = post(server, "/models/iris", b"\xc3\x28")
    assert bad.status_code == 400
    assert bad.json() == {
        "error": "'utf-8' codec can't decode byte 0xc3 in position 0: invalid continuation byte"
    }
    good = httpx.post(
        f"{server.url}/models/iris",
        content=iris_body("5.1"),
        headers={"Content-Type": "application/json", "Origin": "https://app.example"},
        timeout=60,
    )
    assert good.status_code == 200, good.text
    for answer in (bad, good):
        assert answer.headers["x-compute-type"] == "cpu"
        assert float(answer.headers["x-compute-time"]) >= 0
    exposed = good.headers["access-control-expose-headers"].lower()
    assert "x-compute-time" in exposed and "x-compute-type" in exposed
