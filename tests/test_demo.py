"""The Gradio demo in headless Chromium against a real fhe-server serving the shipped models."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.api import ServerError
from client.demo.card import describe_card
from client.demo.messages import explain
from client.demo.rows import describe_row, example_lines, row_of
from client.demo.steps import TABULAR, DemoTab
from client.local_server import free_port
from fhe.contract.bundle import Column, RawInput, TabularInput, TabularMetrics, read_metadata
from fhe.contract.model_card import FheModelCard
from server.settings import SHIPPED_MODELS_DIR
from tests.conftest import REPO
from tests.support.demo_process import DemoProcess, open_demo, text_of
from tests.support.server_process import ServerProcess

ARTIFACTS = REPO / "test-artifacts"
POSITIVE = "I love this airline, the crew was wonderful and the flight was perfect"
NEGATIVE = "worst flight ever, they lost my bag and nobody helped"
TABULAR_MODEL = "breast-cancer"
"""The tabular tab's model by default (FHE_DEMO_TABULAR_MODEL)."""
SIZE = r"[\d.]+ (?:B|kB|MB)"


@pytest.fixture(scope="module")
def demo(shipped_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`fhe-client demo` talking to that server; yields the page URL."""
    process = DemoProcess(shipped_server.url, tmp_path_factory.mktemp("demo") / "demo.log")
    yield process.start().url
    process.stop()


def generate_keys(page) -> str:
    page.click("#keygen")
    info = text_of(page, "#key-info", "Keys ready")
    assert "Keys ready" in info, info
    return info


def step_through(page, text: str) -> str:
    """Steps 2 to 4 by their own buttons; returns the label the page shows."""
    page.fill("#message textarea", text)
    page.click("#encrypt")
    encrypted = text_of(page, "#encrypt-info", f"Encrypted “{text[:30]}")
    assert "Encrypted" in encrypted and "Ciphertext" in encrypted, encrypted
    assert page.input_value("#embedding textarea").startswith("[")
    assert "(32 values)" in page.input_value("#quantized textarea")  # the shipped PCA width
    assert "more bytes" in page.input_value("#ciphertext textarea")
    page.click("#run")
    ran = text_of(page, "#run-info", f"Done for “{text[:30]}")
    assert re.search(r"Encrypted result: [\d.]+ [kM]B \([\d,]+ bytes\)", ran), ran
    assert "Server time" in ran, ran
    page.click("#decrypt")
    verdict = text_of(page, "#verdict", f"for “{text[:30]}")
    assert "Prediction" in verdict, verdict
    return page.inner_text("#label .output-class").strip()


def key_id(info: str) -> str:
    return info.split("Key id ")[1].split(".")[0].strip()


def card_of(server: ServerProcess, model: str) -> dict:
    answer = httpx.get(f"{server.url}/v1/models/{model}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def clear_twin_says(server: ServerProcess, card: dict, row: dict) -> object:
    """What the model's clear twin on the server predicts for `row`."""
    twin = card["metadata"]["clear_twin"]
    inputs = {"data": {column: [value] for column, value in row.items()}}
    answer = httpx.post(f"{server.url}/models/{twin}", json={"inputs": inputs}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


def open_tabular_tab(page) -> str:
    """Switch to the tabular tab once its model card has loaded; returns that card's text."""
    page.click("button[role=tab]:has-text('Table row')")
    page.wait_for_selector("#tabular-model-card p", timeout=60_000)
    return page.inner_text("#tabular-model-card")


def editor_cell(page, line: int, column: int):
    return page.locator(f'#tabular-row .body-cell[data-row="{line}"][data-col="{column}"]')


def edit_value(page, line: int, value: str) -> None:
    """Type a new value into the row editor's value column, as a person does."""
    cell = editor_cell(page, line, 2)
    cell.dblclick()
    cell.locator("textarea").fill(value)
    cell.locator("textarea").press("Enter")
    page.wait_for_function(
        "([selector, value]) => document.querySelector(selector)?.innerText.trim() === value",
        arg=[f'#tabular-row .body-cell[data-row="{line}"][data-col="2"]', value],
    )


def test_steps_show_each_stage_and_decrypt_the_right_label(browser, demo: str) -> None:
    page = open_demo(browser, demo)
    assert "Model sentiment" in page.inner_text("#model-card")
    info = generate_keys(page)
    assert "MB" in info and len(key_id(info)) == 64
    assert step_through(page, POSITIVE) == "positive"
    assert step_through(page, NEGATIVE) == "negative"
    assert NEGATIVE[:30] in page.inner_text("#verdict")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-finished.png"), full_page=True)
    assert "Traceback" not in page.content()
    page.context.close()


def test_two_sessions_at_once_have_their_own_keys(browser, demo: str) -> None:
    first, second = open_demo(browser, demo), open_demo(browser, demo)
    for page, text in ((first, POSITIVE), (second, NEGATIVE)):
        page.fill("#message textarea", text)
    first.click("#run-all")
    second.click("#run-all")
    verdicts = [text_of(page, "#verdict", "Prediction") for page in (first, second)]
    assert all("Prediction" in verdict for verdict in verdicts), verdicts
    ids = [key_id(page.inner_text("#key-info")) for page in (first, second)]
    assert ids[0] != ids[1]
    assert first.inner_text("#label .output-class").strip() == "positive"
    assert second.inner_text("#label .output-class").strip() == "negative"
    first.context.close()
    second.context.close()


def test_tabular_tab_steps_through_an_edited_example_row(
    browser, demo: str, shipped_server: ServerProcess
) -> None:
    card = card_of(shipped_server, TABULAR_MODEL)
    info = card["metadata"]["input"]
    example = info["example"]
    page = open_demo(browser, demo)
    assert f"Model {TABULAR_MODEL}" in open_tabular_tab(page)
    for line, column in enumerate(info["columns"][:5]):
        assert editor_cell(page, line, 0).inner_text().strip() == column["name"]
        assert float(editor_cell(page, line, 2).inner_text()) == example[column["name"]]
    first = info["columns"][0]["name"]
    edited = f"{example[first] * 1.05:.2f}"
    edit_value(page, 0, edited)
    shown = f"the example row with {first} {edited}"

    page.click("#tabular-keygen")
    keys = text_of(page, "#tabular-key-info", "Keys ready")
    assert re.search(rf"Evaluation keys: {SIZE},? .*generated in [\d.]+ s and uploaded in", keys)
    page.click("#tabular-encrypt")
    encrypted = text_of(page, "#tabular-encrypt-info", f"Encrypted {shown}")
    took = r"in [\d.]+ s \(preprocessing [\d.]+ s, quantize and encrypt [\d.]+ s\)"
    assert re.search(rf"{took}\. Ciphertext: {SIZE}", encrypted), encrypted
    assert page.input_value("#tabular-features textarea").startswith("[")
    assert f"({info['features']} values)" in page.input_value("#tabular-quantized textarea")
    assert "more bytes" in page.input_value("#tabular-ciphertext textarea")
    page.click("#tabular-run")
    ran = text_of(page, "#tabular-run-info", f"Done for {shown}")
    assert re.search(rf"Encrypted result: {SIZE}.*Server time [\d.]+ s \(FHE [\d.]+ s\)", ran)
    page.click("#tabular-decrypt")
    verdict = text_of(page, "#tabular-verdict", f"for {shown}")
    label = page.inner_text("#tabular-label .output-class").strip()
    assert label in card["labels"] and f"Prediction: {label}" in verdict, verdict
    assert label == clear_twin_says(shipped_server, card, {**example, first: float(edited)})

    page.click("#tabular-reset")
    page.wait_for_function(
        "([selector, value]) => document.querySelector(selector)?.innerText.trim() === value",
        arg=['#tabular-row .body-cell[data-row="0"][data-col="2"]', str(example[first])],
    )
    page.click("#tabular-run-all")
    text_of(page, "#tabular-verdict", "for the example row (")
    label = page.inner_text("#tabular-label .output-class").strip()
    assert label == clear_twin_says(shipped_server, card, example)
    assert "Model sentiment" in page.inner_text("#model-card")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-tabular-finished.png"), full_page=True)
    assert "Traceback" not in page.content()
    page.context.close()


def test_tabular_steps_show_a_regression_value(
    shipped_server: ServerProcess, tmp_path: Path
) -> None:
    """The tabular tab's handlers, without a browser, on the shipped regression model."""
    tab = DemoTab(shipped_server.url, "diabetes", tmp_path, TABULAR)
    typed = tab.card()
    card = typed.model_dump(mode="json")
    info = card["metadata"]["input"]
    session, keys = tab.keygen(None)
    assert "Keys ready" in keys, keys
    encrypted = tab.encrypt(session, example_lines(typed.metadata.input))[-1]
    assert "**Encrypted** the example row in" in encrypted, encrypted
    ran = tab.run(session, progress=lambda *args, **kwargs: None)[1]
    assert "**Done** for the example row." in ran, ran
    value, verdict = tab.decrypt(session)
    assert f"Predicted value: **{value}** for the example row" in verdict, verdict
    twin = clear_twin_says(shipped_server, card, info["example"])
    error = card["metadata"]["metrics"]["max_quantization_error"]
    assert abs(float(value) - twin) <= error + abs(twin) * 1e-3
    session.close()
    text_model = DemoTab(shipped_server.url, "sentiment", tmp_path, TABULAR).describe_model()
    assert "takes text, not table rows" in text_model and "FHE_DEMO_TABULAR_MODEL" in text_model


@pytest.mark.fast
def test_row_editor_lines_round_trip_and_name_the_edits() -> None:
    info = TabularInput(
        columns=[Column(name="a", dtype="float64"), Column(name="b", dtype="string")],
        features=2,
        example={"a": 1.5, "b": None},
    )
    lines = example_lines(info)
    assert lines == [["a", "float64", "1.5"], ["b", "string", ""]]
    row = row_of(lines)
    assert row == {"a": "1.5", "b": ""}
    assert describe_row({**row, "a": "1.50"}, info.example) == "the example row"
    assert describe_row({**row, "a": "2"}, info.example) == "the example row with a 2"
    assert describe_row(row, None) == "your row"
    assert example_lines(RawInput(features=2)) == []


@pytest.mark.fast
def test_a_card_line_shows_only_the_scores_the_card_has() -> None:
    metadata = read_metadata(SHIPPED_MODELS_DIR / "diabetes")
    assert isinstance(metadata.metrics, TabularMetrics)
    card = FheModelCard(name="diabetes", kind="fhe", status="ready", metadata=metadata)
    whole = describe_card(card, "diabetes", "http://server", "row")
    assert "R² 0.44, mean absolute error 43.4 on its test set" in whole, whole
    for kept in ({"r2": 0.5}, {"mae": 12.5}, {}):
        metadata.metrics.simulated = kept
        line = describe_card(card, "diabetes", "http://server", "row")
        assert "R² 0.50 on its test set" in line if "r2" in kept else "R²" not in line, line
        assert "mean absolute error 12.5 on" in line if "mae" in kept else "error" not in line
        assert ("on its test set" in line) == bool(kept) and "FHE per row" in line, line


def test_steps_out_of_order_say_what_to_do_first(browser, demo: str) -> None:
    page = open_demo(browser, demo)
    page.fill("#message textarea", POSITIVE)
    page.click("#encrypt")
    assert "Generate the keys first" in text_of(page, "#encrypt-info", "keys first")
    page.click("#decrypt")
    assert "Generate the keys first" in text_of(page, "#verdict", "keys first")
    page.context.close()


def test_server_down_shows_a_readable_error(browser, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    process = DemoProcess(nowhere, tmp_path / "demo.log").start()
    try:
        page = open_demo(browser, process.url)
        assert "cannot be reached" in page.inner_text("#model-card")
        page.fill("#message textarea", POSITIVE)
        page.click("#run-all")
        error = text_of(page, "#key-info", "cannot be reached")
        assert f"The FHE server at {nowhere} cannot be reached" in error
        assert "Traceback" not in page.content()
        page.context.close()
    finally:
        process.stop()


def test_missing_model_is_named(browser, shipped_server: ServerProcess, tmp_path: Path) -> None:
    env = {"FHE_DEMO_TABULAR_MODEL": "nosuch-table"}
    process = DemoProcess(shipped_server.url, tmp_path / "demo.log", model="nosuch", env=env)
    process.start()
    try:
        page = open_demo(browser, process.url)
        assert "no model named 'nosuch'" in page.inner_text("#model-card")
        page.click("#keygen")
        assert "no model named 'nosuch'" in text_of(page, "#key-info", "nosuch")
        assert "no model named 'nosuch-table'" in open_tabular_tab(page)
        page.click("#tabular-run-all")
        assert "no model named 'nosuch-table'" in text_of(page, "#tabular-key-info", "nosuch")
        assert "Traceback" not in page.content()
        page.context.close()
    finally:
        process.stop()


@pytest.mark.fast
def test_busy_server_message_says_when_to_retry() -> None:
    # The 503 itself is covered by tests/test_api_errors.py; here only its wording for people.
    busy = ServerError(503, "busy", "queue full", retry_after=2)
    assert explain(busy, "http://x") == (
        "The server is busy with other encrypted predictions (its queue is full). Try again in 2 s."
    )


def test_closing_the_tab_deletes_its_keys(
    browser, shipped_server: ServerProcess, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    process = DemoProcess(shipped_server.url, tmp_path / "demo.log", env={"TMPDIR": str(temp)})
    process.start()
    try:
        page = open_demo(browser, process.url)
        generate_keys(page)
        sessions = list(temp.glob("fhe-demo-*/session-*"))
        assert len(sessions) == 1 and any(sessions[0].rglob("*")), sessions
        page.context.close()
        deadline = time.monotonic() + 60
        while sessions[0].exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not sessions[0].exists()
    finally:
        process.stop()
