"""A real `fhe-client demo` subprocess, and headless Chromium to drive it."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from client.local_server import free_port, spawn, stop_process, wait_for_url
from tests.support.server_process import BIN

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
"""Debian's Chromium (apt-get install chromium): Playwright's own browser download fails here."""

STEP_MS = 180_000
"""How long a browser test waits for one demo step (keygen and FHE take seconds each)."""

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class DemoProcess:
    """`fhe-client demo` on a loopback port, talking to the server at `server_url`."""

    server_url: str
    log: Path
    model: str = "sentiment"
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 120.0) -> DemoProcess:
        command = [str(BIN / "fhe-client"), "demo", "--server", self.server_url]
        command += ["--model", self.model, "--port", str(self.port), *self.extra_args]
        self.process = spawn(command, self.log, self.env)
        wait_for_url(self.url, self.process, self.log, timeout, "fhe-client demo")
        return self

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} missing: `make system-packages` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            browser.close()


def open_demo(browser, url: str):
    """A page on the demo in a browser context of its own (a session of its own), once loaded."""
    page = browser.new_context(viewport={"width": 1200, "height": 2000}).new_page()
    page.goto(url)
    page.wait_for_selector("#model-card p", timeout=60_000)
    return page


def text_of(page, selector: str, wanted: str) -> str:
    """Wait until `selector` shows `wanted` (or an error) and return its text."""
    page.wait_for_selector(f"{selector} >> text=/{re.escape(wanted)}|Error/", timeout=STEP_MS)
    return page.inner_text(selector)
