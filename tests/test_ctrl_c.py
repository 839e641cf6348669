"""One Ctrl-C in the terminal running `make run` stops make, the demo, the server and its workers.

A terminal sends SIGINT to its whole foreground process group; the test starts `make run` in a
group of its own and does the same once the API and the demo page both answer (the server's FHE
workers are still loading circuits then, the slowest moment to stop), in three situations: SIGINT
at its default; SIGINT inherited as ignored, as a shell leaves it for a job started with `&`; and
a browser running the demo's steps, so that Concrete is at work in the page process. Within 10 s
no process that `make run` started is left, zombies included, and no session's keys are left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from client.local_server import free_port, wait_for_url
from tests.conftest import REPO
from tests.support.demo_process import open_demo

STOP_SECONDS = 10.0


def group_members(groups: set[int]) -> list[psutil.Process]:
    """Every process, zombies included, whose process group is one of `groups`."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in groups:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def describe(processes: list[psutil.Process]) -> str:
    """One line per process: pid, status and command."""
    lines = []
    for process in processes:
        try:
            lines.append(f"{process.pid} {process.status()} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return "\n".join(lines)


@pytest.mark.parametrize(
    "situation", ["default", "ignored", pytest.param("browser", marks=pytest.mark.browser)]
)
def test_one_ctrl_c_stops_make_run_and_every_process_it_started(
    request: pytest.FixtureRequest, tmp_path: Path, situation: str
) -> None:
    port, demo_port = free_port(), free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FHE_")}
    env.update(FHE_SERVER_DATA_DIR=str(tmp_path / "server-data"), TMPDIR=str(temp))
    command = ["make", "run", f"PORT={port}", f"DEMO_PORT={demo_port}"]
    if situation == "ignored":
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    log = tmp_path / "make-run.log"
    with log.open("ab") as output:
        make = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: list[psutil.Process] = []
    page = None
    try:
        wait_for_url(f"http://127.0.0.1:{port}/healthz", make, log, 300, "make run")
        wait_for_url(f"http://127.0.0.1:{demo_port}/", make, log, 300, "make run")
        if situation == "browser":
            page = open_demo(request.getfixturevalue("browser"), f"http://127.0.0.1:{demo_port}/")
            page.fill("#message textarea", "thanks for the great service, the crew was lovely")
            page.click("#run-all")
            time.sleep(1)
        started = psutil.Process(make.pid).children(recursive=True)
        servers = [p for p in started if "server.cli" in p.cmdline()]
        assert len(servers) == 1 and servers[0].children(), describe(started)
        groups = {make.pid, *(os.getpgid(p.pid) for p in started)}

        os.killpg(make.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_SECONDS
        with contextlib.suppress(subprocess.TimeoutExpired):
            make.wait(timeout=STOP_SECONDS)
        _, alive = psutil.wait_procs(started, timeout=max(0.0, deadline - time.monotonic()))
        left = group_members(groups)
        assert make.poll() is not None and not alive and not left, (
            f"still there {STOP_SECONDS:.0f} s after SIGINT:\n{describe(alive + left)}\n"
            f"{log.read_text()[-3000:]}"
        )
        assert not list(temp.glob("fhe-demo-*")), "the sessions' keys were left behind"
    finally:
        if page is not None:
            page.context.close()
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        make.wait(timeout=30)
