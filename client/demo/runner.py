"""Start the demo: the Gradio page, and with `--start-server` a local fhe-server beside it.

This process only supervises its children, the page (`python -m client.demo`) and the server, each
in a process group of its own, and deletes the sessions' keys once they have ended. It loads
neither Gradio nor Concrete (whose compiler kills its own process with SIGKILL when a SIGINT
arrives during a key generation), so a Ctrl-C, which a terminal sends to its foreground process
group (`make` and this process), always reaches code that stops the page, the server and its
workers within a bound. SIGINT is handled even when it was inherited as ignored, as a shell leaves
it for a job started with `&`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from client.demo.settings import DemoSettings
from client.local_server import LocalServer, adopt_orphans, reap_children, spawn, stop_processes

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_SECONDS = 5.0
"""How long the server and the page may take to exit gracefully before they are killed."""
PAGE = [sys.executable, "-m", "client.demo"]


def _interrupt(signum: int, _frame: object) -> None:
    """Stop the demo."""
    raise KeyboardInterrupt(f"signal {signum}")


def _handle_stop_signals(handler: signal.Handlers | Callable[[int, object], None]) -> None:
    """Set the handler of SIGINT, SIGTERM and SIGHUP."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, handler)


def _first_to_exit(children: dict[str, subprocess.Popen]) -> tuple[str, int]:
    """Wait until one of the named processes exits; its name and exit code."""
    while True:
        for name, child in children.items():
            if child.poll() is not None:
                return name, child.returncode
        time.sleep(0.2)


def run_demo(settings: DemoSettings) -> None:
    """Run the page, and the server if `start_server`, until a signal or the end of either; then
    stop both and delete the sessions' keys."""
    _handle_stop_signals(_interrupt)
    adopt_orphans()
    server = None
    if settings.start_server:
        server = LocalServer(host=settings.server_host, port=settings.server_port)
    sessions_dir = Path(tempfile.mkdtemp(prefix="fhe-demo-"))
    page: subprocess.Popen | None = None
    try:
        server_url = settings.server_url
        if server is not None:
            print(f"starting fhe-server on {server.url} ...", flush=True)
            server_url = server.start().url
        page = spawn([*PAGE, str(sessions_dir)], None, page_env(settings, server_url))
        children = {"the demo page": page}
        if server is not None and server.process is not None:
            children["fhe-server"] = server.process
        name, code = _first_to_exit(children)
        raise RuntimeError(f"{name} exited with code {code}; the demo stops")
    except KeyboardInterrupt:
        print("stopping the demo" + (" and fhe-server" if server else ""), flush=True)
    finally:
        _handle_stop_signals(signal.SIG_IGN)
        stop_processes([page, server.process if server else None], STOP_SECONDS)
        reap_children(timeout=2.0)
        shutil.rmtree(sessions_dir, ignore_errors=True)


def _launch(settings: DemoSettings, sessions_root: Path) -> None:
    """Build the page and serve it from Gradio's own threads."""
    from client.demo.page import DemoPage, theme

    demo = DemoPage(settings, sessions_root)
    threading.Thread(target=demo.warm_up, name="embedder-warm-up", daemon=True).start()
    page = demo.build()
    page.queue(default_concurrency_limit=settings.concurrency)
    print(
        f"demo of models {settings.model!r} and {settings.tabular_model!r} on "
        f"http://{settings.host}:{settings.port}, talking to {settings.server_url}",
        flush=True,
    )
    page.launch(
        server_name=settings.host,
        server_port=settings.port,
        theme=theme(),
        ssr_mode=False,
        show_error=False,
        quiet=True,
        prevent_thread_lock=True,
    )


def serve_page(settings: DemoSettings, sessions_dir: Path) -> None:
    """Serve the page from this process, sessions keeping their keys under `sessions_dir`; at a
    signal, exit at once (the caller deletes `sessions_dir` after this process has ended).

    The exit is immediate (os._exit): a key generation or an encryption still running in
    Concrete's native threads would otherwise hold the interpreter's shutdown for seconds.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _handle_stop_signals(_interrupt)
    try:
        _launch(settings, sessions_dir)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _handle_stop_signals(signal.SIG_IGN)
        print("stopping the demo page", flush=True)
    sys.stderr.flush()
    os._exit(0)


def page_env(settings: DemoSettings, server_url: str) -> dict[str, str]:
    """The FHE_DEMO_* variables that give a page process these settings and this server."""
    values = settings.model_dump(exclude={"server_url", "start_server"}, exclude_none=True)
    env = {f"FHE_DEMO_{name.upper()}": str(value) for name, value in values.items()}
    return {**env, "FHE_SERVER_URL": server_url, "FHE_DEMO_SERVER_URL": server_url}
