"""Debian's nginx running the shipped deployment/nginx/fhe-server.conf in front of real processes,
for the proxy's tests (tests/test_deployment.py, tests/test_edge.py, tests/test_shared_state.py).

The shipped file is copied with only its upstream addresses, listen ports and two timeouts
changed, plus what a test's `edit` changes (an option uncommented, a limit lowered)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from client.local_server import die_with_parent, free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deployment" / "nginx" / "fhe-server.conf"
TEST_TIMEOUT = 2
"""The header and body timeouts of the nginx the tests run (seconds), short to keep them fast."""

Edit = Callable[[str], str]
"""A change a test makes to the rendered file (after the upstreams, ports and timeouts)."""


def nginx_binary() -> str:
    """Debian's nginx (in /usr/sbin, which a non-root PATH may lack)."""
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert found, "nginx is missing: apt-get install nginx (make test does)"
    return found


def replace(text: str, old: str, new: str, count: int) -> str:
    """`text` with `old`, which must occur exactly `count` times, replaced by `new`."""
    assert text.count(old) == count, f"{NGINX_CONF.name} no longer has {old!r} {count}x"
    return text.replace(old, new)


def render_nginx_conf(
    directory: Path,
    api: str,
    demo: str,
    api_port: int,
    demo_port: int,
    timeout: int,
    edit: Edit | None = None,
) -> Path:
    """A copy of the shipped nginx file changing only upstreams, listen ports and two timeouts
    (and what `edit` changes)."""
    # The compose and cluster names do not resolve here; short timeouts keep the tests fast.
    text = NGINX_CONF.read_text()
    changes = [
        ("server fhe-api:8000;", f"server {api};", 2),
        ("server fhe-demo:7860;", f"server {demo};", 1),
        ("listen 8080;", f"listen 127.0.0.1:{api_port};", 1),
        ("listen 7860;", f"listen 127.0.0.1:{demo_port};", 1),
        ("client_header_timeout 10s;", f"client_header_timeout {timeout}s;", 2),
        ("client_body_timeout 30s;", f"client_body_timeout {timeout}s;", 2),
    ]
    for old, new, count in changes:
        text = replace(text, old, new, count)
    if edit is not None:
        text = edit(text)
    rendered = directory / NGINX_CONF.name
    rendered.write_text(text)
    return rendered


def nginx_wrapper(directory: Path, conf: Path) -> Path:
    """A main nginx.conf including `conf` in its http block (as the official image's does)."""
    # Its pid file, logs and temporary files go to `directory`.
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx would run its workers as nobody, who cannot enter pytest's 0700 directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    wrapper = directory / "nginx.conf"
    wrapper.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {directory / "access.log"};
{temp}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 65;
    include {conf};
}}
"""
    )
    return wrapper


def nginx_command(directory: Path, *args: str) -> list[str]:
    """nginx run on the wrapper config in `directory`."""
    return [
        nginx_binary(),
        "-p",
        str(directory),
        "-e",
        str(directory / "error.log"),
        "-c",
        str(directory / "nginx.conf"),
        *args,
    ]


def nginx_t(directory: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on the wrapper config in `directory` (its report is on stderr)."""
    return subprocess.run(
        nginx_command(directory, "-t"), capture_output=True, text=True, timeout=60, check=False
    )


@contextmanager
def running_nginx(directory: Path, api: str, demo: str, edit: Edit | None = None) -> Iterator[str]:
    """Debian's nginx in the foreground on the rendered shipped config; yields the API's URL."""
    directory.mkdir(parents=True, exist_ok=True)
    api_port, demo_port = free_port(), free_port()
    conf = render_nginx_conf(directory, api, demo, api_port, demo_port, TEST_TIMEOUT, edit)
    nginx_wrapper(directory, conf)
    process = subprocess.Popen(
        nginx_command(directory),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (directory / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", api_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{api_port}"
    finally:
        stop_process(process)
