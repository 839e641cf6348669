"""deployment/space: the assembled Space runs, with its own server or against a remote one.

Also `make run`, the README's main command: the server and the demo start and stop together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import gradio
import httpx
import pytest
import yaml

from client.local_server import free_port, wait_for_url
from tests.conftest import REPO
from tests.support.demo_process import open_demo, text_of
from tests.support.server_process import ServerProcess

SPACE = REPO / "deployment" / "space"


def front_matter(readme: Path) -> dict:
    _, header, _ = readme.read_text().split("---\n", 2)
    return yaml.safe_load(header)


def assemble(out: Path, *flags: str) -> Path:
    subprocess.run(
        [sys.executable, str(SPACE / "assemble.py"), str(out), *flags], check=True, timeout=120
    )
    return out


@pytest.fixture
def space_env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FHE_")}
    env.update(
        FHE_DEMO_HOST="127.0.0.1",
        FHE_DEMO_PORT=str(free_port()),
        FHE_DEMO_SERVER_PORT=str(free_port()),
        FHE_SERVER_DATA_DIR=str(tmp_path / "server-data"),
        PYTHONPATH="",
    )
    return env


def start_space(space: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{env['FHE_DEMO_PORT']}/"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=space, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for_url(url, process, log, timeout=180)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.fast
def test_space_config_matches_the_project() -> None:
    meta = front_matter(SPACE / "README.md")
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gradio.__version__
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (SPACE / meta["app_file"]).is_file()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pinned: list[str] = []
    for pin in [*project["dependencies"], *extras["client"], *extras["server"]]:
        if pin not in pinned:
            pinned.append(pin)
    required = [
        line
        for line in (SPACE / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert required == [pin for pin in pinned if not pin.startswith("gradio==")]


def test_space_with_its_own_server_predicts(browser, tmp_path: Path, space_env) -> None:
    space = assemble(tmp_path / "space")
    assert (space / "models" / "sentiment" / "server.zip").is_file()
    assert (space / "models" / "breast-cancer" / "preprocessing.skops").is_file()
    log = tmp_path / "space.log"
    for url in start_space(space, space_env, log):
        assert f"models from {space / 'models'}" in log.read_text()
        page = open_demo(browser, url)
        page.fill("#message textarea", "thanks for the great service, the crew was lovely")
        page.click("#run-all")
        verdict = text_of(page, "#verdict", "Prediction")
        assert "Prediction: positive" in verdict, verdict
        page.context.close()


def test_space_calling_a_remote_server(
    browser, tmp_path: Path, space_env, shipped_server: ServerProcess
) -> None:
    space = assemble(tmp_path / "space", "--remote-server")
    assert not (space / "server").exists() and not (space / "models").exists()
    space_env["FHE_SERVER_URL"] = shipped_server.url
    for url in start_space(space, space_env, tmp_path / "space.log"):
        page = open_demo(browser, url)
        assert f"on {shipped_server.url}" in page.inner_text("#model-card")
        page.context.close()


def test_make_run_serves_api_and_demo_then_stops_both(tmp_path: Path) -> None:
    port, demo_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FHE_")}
    env["FHE_SERVER_DATA_DIR"] = str(tmp_path / "server-data")
    log = tmp_path / "make-run.log"
    with log.open("ab") as output:
        make = subprocess.Popen(
            ["make", "run", f"PORT={port}", f"DEMO_PORT={demo_port}"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_url(f"http://127.0.0.1:{demo_port}/", make, log, timeout=300)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["models"]
        assert any(m["name"] == "sentiment" and m["status"] == "ready" for m in models)
    finally:
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_demo_stops_the_server_it_started(tmp_path: Path) -> None:
    port, demo_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FHE_")}
    env["FHE_SERVER_DATA_DIR"] = str(tmp_path / "server-data")
    log = tmp_path / "demo.log"
    command = ["fhe-client", "demo", "--start-server", "--server-port", str(port)]
    with log.open("ab") as output:
        demo = subprocess.Popen(
            [str(Path(sys.executable).parent / command[0]), *command[1:], "--port", str(demo_port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_url(f"http://127.0.0.1:{demo_port}/", demo, log, timeout=300)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        demo.terminate()
        demo.wait(timeout=60)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
