"""Clear scikit-learn models through a real server: the compatible contract and the native route.

The fixtures under tests/fixtures/sklearn were trained with scikit-learn 1.5.0 and 1.2.2 by
tests/fixtures/generate_sklearn.py; MANIFEST.json records how each behaves on 1.5.0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server_process import ServerProcess

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sklearn"
MANIFEST = {
    row["name"]: row for row in json.loads((FIXTURES / "MANIFEST.json").read_text())["fixtures"]
}
REFUSED_PICKLE = "tabular-regression-linear-pickle-sk1.5.0"
UNTRUSTED = "tabular-classification-untrusted-skops-sk1.5.0"
IRIS = "tabular-classification-linear-skops-sk1.5.0"
IRIS_HGB = "tabular-classification-hgb-pickle-sk1.5.0"
# skops 0.5.0 cannot audit HistGradientBoosting files saved by scikit-learn 1.5 (their numpy
# random Generator); the operator trusts these by name in the shared server below.
UNAUDITABLE = [
    n for n, row in MANIFEST.items() if row["sklearn_version"] == "1.5.0" and not row["loads"]
]


def sample(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name / "sample.json").read_text())


def allowed_pickle() -> list[str]:
    return [
        name
        for name, row in MANIFEST.items()
        if row["format"] in ("pickle", "joblib", "noconfig") and name != REFUSED_PICKLE
    ]


def skops_types(name: str) -> list[str]:
    """What skops does not trust in a fixture's file (the operator allows them by name)."""
    import skops.io as sio

    return sio.get_untrusted_types(file=FIXTURES / name / MANIFEST[name]["model_file"])


@pytest.fixture(scope="module")
def clear_server(tmp_path_factory: pytest.TempPathFactory):
    env = {
        "FHE_SERVER_ALLOW_PICKLE": json.dumps(allowed_pickle()),
        "FHE_SERVER_TRUSTED_TYPES": json.dumps(
            {
                UNTRUSTED: sample(UNTRUSTED)["untrusted_types"],
                **{n: ["*"] for n in UNAUDITABLE},
                **{
                    n: skops_types(n)
                    for n in OLD_FAILING_PREDICT
                    if MANIFEST[n]["format"] == "skops"
                },
            }
        ),
    }
    server = ServerProcess(FIXTURES, tmp_path_factory.mktemp("clear") / "data", env=env).start()
    yield server
    server.stop()


def same(actual: Any, expected: Any) -> bool:
    """Equal, with floats compared to 1e-6."""
    if isinstance(expected, float) or isinstance(actual, float):
        return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in actual
        )
    return actual == expected


def post(server: ServerProcess, name: str, body: Any, route: str = "models") -> httpx.Response:
    url = (
        f"{server.url}/{route}/{name}"
        if route == "models"
        else f"{server.url}/v1/models/{name}/predict"
    )
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, timeout=60)


CURRENT = [
    n for n, row in MANIFEST.items() if row["sklearn_version"] == "1.5.0" and n != REFUSED_PICKLE
]
OLD = {n: row for n, row in MANIFEST.items() if row["sklearn_version"] != "1.5.0"}
OLD_PREDICTING = [n for n, row in OLD.items() if row["loads"] and row["predicts"]]
OLD_FAILING_PREDICT = [n for n, row in OLD.items() if row["loads"] and not row["predicts"]]
OLD_FAILING_LOAD = [n for n, row in OLD.items() if not row["loads"]]


@pytest.mark.parametrize("name", CURRENT)
def test_current_version_models_answer_the_expected_output(clear_server, name: str) -> None:
    data = sample(name)
    response = post(clear_server, name, {"inputs": data["inputs"]})
    assert response.status_code == 200, response.text
    assert same(response.json(), data["expected"])
    native = post(clear_server, name, {"inputs": data["inputs"]}, route="v1")
    assert native.status_code == 200
    assert same(native.json()["output"], data["expected"]) and native.json()["warnings"] == []


def same_shape(actual: Any, expected: Any) -> bool:
    """The same structure and labels, values aside (text models whose old IDF weights are lost)."""
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(map(same_shape, actual, expected))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and actual.get("label") == expected.get("label")
    return type(actual) is type(expected)


@pytest.mark.parametrize("name", OLD_PREDICTING)
def test_old_version_models_warn_with_the_predictions_inside(clear_server, name: str) -> None:
    data = sample(name)
    response = post(clear_server, name, {"inputs": data["inputs"]})
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "warnings"}
    inner = json.loads(body["error"])
    assert inner["error"] == "There were warnings while running the model."
    if MANIFEST[name]["predictions_match"]:
        assert same(inner["output"], data["expected"])
    else:
        assert same_shape(inner["output"], data["expected"])
    assert any("Trying to unpickle estimator" in w for w in inner["warnings"])
    assert any("Trying to unpickle estimator" in w for w in body["warnings"])
    assert body["warnings"] == sorted(set(inner["warnings"]))
    native = post(clear_server, name, {"inputs": data["inputs"]}, route="v1")
    assert native.status_code == 200
    assert native.json()["output"] == inner["output"]
    assert any("Trying to unpickle estimator" in w for w in native.json()["warnings"])


@pytest.mark.parametrize("name", OLD_FAILING_PREDICT)
def test_old_models_that_fail_to_predict_give_the_error_and_warnings(clear_server, name) -> None:
    response = post(clear_server, name, {"inputs": sample(name)["inputs"]})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] in MANIFEST[name]["error"]
    assert any("Trying to unpickle estimator" in w for w in body["warnings"])
    native = post(clear_server, name, {"inputs": sample(name)["inputs"]}, route="v1")
    assert native.status_code == 400 and native.json()["error"] == body["error"]


@pytest.mark.parametrize("name", OLD_FAILING_LOAD)
def test_model_that_cannot_load_says_so_on_every_call(clear_server, name: str) -> None:
    for _ in range(2):
        response = post(clear_server, name, {"inputs": sample(name)["inputs"]})
        assert response.status_code == 400
        assert response.json()["error"].startswith("An error occurred while loading the model:")
    listing = {m["name"]: m for m in httpx.get(f"{clear_server.url}/v1/models").json()["models"]}
    assert listing[name]["status"] == "unloadable"


def test_column_mismatches_give_the_exact_messages(clear_server) -> None:
    data = sample(IRIS_HGB)["inputs"]["data"]
    columns = list(data)
    extra = {**data, "colour": ["red"] * len(data[columns[0]])}
    response = post(clear_server, IRIS_HGB, {"inputs": {"data": extra}})
    inner = json.loads(response.json()["error"])
    assert response.status_code == 400
    assert inner["warnings"] == ["The following columns were given but not expected: {'colour'}"]
    assert same(inner["output"], sample(IRIS_HGB)["expected"])

    missing = {key: value for key, value in data.items() if key != columns[0]}
    response = post(clear_server, IRIS_HGB, {"inputs": {"data": missing}})
    inner = json.loads(response.json()["error"])
    assert inner["warnings"] == [
        f"The following columns were expected but not given: {{'{columns[0]}'}}"
    ]
    assert len(inner["output"]) == len(data[columns[0]])  # HGB takes the NaN column

    both = {**missing, "colour": ["red"] * len(data[columns[0]])}
    response = post(clear_server, IRIS_HGB, {"inputs": {"data": both}})
    assert json.loads(response.json()["error"])["warnings"] == [
        "The following columns were given but not expected: {'colour'}",
        f"The following columns were expected but not given: {{'{columns[0]}'}}",
    ]


def test_model_that_cannot_take_nan_gives_sklearn_message(clear_server) -> None:
    data = sample(IRIS)["inputs"]["data"]
    first = next(iter(data))
    missing = {key: value for key, value in data.items() if key != first}
    response = post(clear_server, IRIS, {"inputs": {"data": missing}})
    assert response.status_code == 400
    assert "Input X contains NaN" in response.json()["error"]
    native = post(clear_server, IRIS, {"inputs": {"data": missing}}, route="v1")
    assert native.status_code == 400 and "Input X contains NaN" in native.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"no_inputs": 1}', b"[1, 2]", b'{"inputs": {"data": [1, 2]}}', b"\xff\xfe\xfd"],
    ids=["not-json", "no-inputs", "list", "data-not-dict", "not-utf8"],
)
def test_malformed_bodies_give_400_with_only_error(clear_server, body: bytes) -> None:
    response = post(clear_server, IRIS, body)
    assert response.status_code == 400
    assert list(response.json()) == ["error"]


def test_text_model_rejects_non_string(clear_server) -> None:
    text_model = next(n for n in CURRENT if n.startswith("text-classification"))
    response = post(clear_server, text_model, {"inputs": {"data": {"a": [1]}}})
    assert response.status_code == 400 and list(response.json()) == ["error"]


def test_pickle_is_refused_unless_allowed(clear_server) -> None:
    response = post(clear_server, REFUSED_PICKLE, {"inputs": sample(REFUSED_PICKLE)["inputs"]})
    assert response.status_code == 400
    assert "pickle is not allowed" in response.json()["error"]


def test_untrusted_skops_types_are_refused_and_named(tmp_path: Path) -> None:
    server = ServerProcess(FIXTURES, tmp_path / "data").start()
    try:
        response = post(server, UNTRUSTED, {"inputs": sample(UNTRUSTED)["inputs"]})
        assert response.status_code == 400
        assert "numpy.core._multiarray_umath.log1p" in response.json()["error"]
        assert "not trusted" in response.json()["error"]
        unauditable = post(server, UNAUDITABLE[0], {"inputs": sample(UNAUDITABLE[0])["inputs"]})
        assert unauditable.status_code == 400
        assert "skops could not audit" in unauditable.json()["error"]
    finally:
        server.stop()


def test_untrusted_types_allowed_by_the_operator_load(clear_server) -> None:
    data = sample(UNTRUSTED)
    response = post(clear_server, UNTRUSTED, {"inputs": data["inputs"]})
    assert response.status_code == 200, response.text
    assert same(response.json(), data["expected"])


def test_listing_and_card(clear_server) -> None:
    card = httpx.get(f"{clear_server.url}/v1/models/{IRIS}").json()
    assert card["kind"] == "clear" and card["task"] == "tabular-classification"
    assert card["format"] == "skops" and card["sklearn_saved_with"] == "1.5.0"
    assert card["columns"] == list(sample(IRIS)["inputs"]["data"])


def test_single_model_mode(tmp_path: Path) -> None:
    env = {"TASK": "tabular-classification", "MODEL_ID": str(FIXTURES / IRIS)}
    server = ServerProcess(tmp_path / "empty", tmp_path / "data", env=env).start()
    try:
        assert httpx.get(f"{server.url}/").json() == {"ok": "ok"}
        response = httpx.post(f"{server.url}/", json={"inputs": sample(IRIS)["inputs"]})
        assert response.status_code == 200 and same(response.json(), sample(IRIS)["expected"])
    finally:
        server.stop()


def test_unsupported_task_stops_start_up(tmp_path: Path) -> None:
    env = {"TASK": "image-segmentation", "MODEL_ID": str(FIXTURES / IRIS)}
    with pytest.raises(RuntimeError, match="not supported"):
        ServerProcess(tmp_path / "empty", tmp_path / "data", env=env).start(timeout=60)


def test_huggingface_inference_client_works_against_us(clear_server) -> None:
    from huggingface_hub import InferenceClient

    text_model = next(n for n in CURRENT if n.startswith("text-classification-linear-skops"))
    client = InferenceClient(model=f"{clear_server.url}/models/{text_model}")
    result = client.text_classification(sample(text_model)["inputs"])
    expected = sample(text_model)["expected"][0]
    assert {item.label for item in result} == {item["label"] for item in expected}
    table_model = next(n for n in CURRENT if n.startswith("tabular-classification-linear-skops"))
    client = InferenceClient(model=f"{clear_server.url}/models/{table_model}")
    predictions = client.tabular_classification(sample(table_model)["inputs"]["data"])
    assert same(predictions, sample(table_model)["expected"])


def test_oversized_json_bodies_are_413(tmp_path: Path) -> None:
    env = {"FHE_SERVER_MAX_JSON_BYTES": "200"}
    server = ServerProcess(FIXTURES, tmp_path / "data", env=env).start()
    try:
        body = {"inputs": sample(IRIS)["inputs"]}
        response = post(server, IRIS, body)
        assert response.status_code == 413 and list(response.json()) == ["error"]
        native = post(server, IRIS, body, route="v1")
        assert native.status_code == 413 and native.json()["code"] == "too_large"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()
