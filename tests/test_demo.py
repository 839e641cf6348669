"""The Gradio demo in headless Chromium against a real fhe-server serving the shipped model."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import ServerError
from client.demo.messages import explain
from client.local_server import free_port
from tests.conftest import REPO
from tests.demo_process import DemoProcess, open_demo, text_of
from tests.server_process import ServerProcess

ARTIFACTS = REPO / "test-artifacts"
POSITIVE = "I love this airline, the crew was wonderful and the flight was perfect"
NEGATIVE = "worst flight ever, they lost my bag and nobody helped"


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
    assert "(384 values)" in page.input_value("#quantized textarea")
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
    process = DemoProcess(shipped_server.url, tmp_path / "demo.log", model="nosuch").start()
    try:
        page = open_demo(browser, process.url)
        assert "no model named 'nosuch'" in page.inner_text("#model-card")
        page.click("#keygen")
        assert "no model named 'nosuch'" in text_of(page, "#key-info", "nosuch")
        page.context.close()
    finally:
        process.stop()


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
