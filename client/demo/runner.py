"""Start the demo: optionally a local fhe-server, then the Gradio page."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path

from client.demo.local_server import LocalServer
from client.demo.settings import DemoSettings


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_demo(settings: DemoSettings) -> None:
    """Serve the demo page until interrupted; stop the local server, if any, on the way out."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    signal.signal(signal.SIGTERM, _interrupt)
    from client.demo.page import DemoPage, theme

    server = None
    if settings.start_server:
        url = settings.local_server_url()
        print(f"starting fhe-server on {url} ...", flush=True)
        server = LocalServer(settings.server_host, settings.server_port, url).start()
        settings = settings.model_copy(update={"server_url": url})
    try:
        with tempfile.TemporaryDirectory(prefix="fhe-demo-") as sessions_root:
            demo = DemoPage(settings, Path(sessions_root))
            threading.Thread(target=demo.warm_up, name="embedder-warm-up", daemon=True).start()
            page = demo.build()
            page.queue(default_concurrency_limit=settings.concurrency)
            print(
                f"demo of model {settings.model!r} on http://{settings.host}:{settings.port}, "
                f"talking to {settings.server_url}",
                flush=True,
            )
            page.launch(
                server_name=settings.host,
                server_port=settings.port,
                theme=theme(),
                ssr_mode=False,
                show_error=False,
                quiet=True,
            )
    finally:
        if server is not None:
            server.stop()
