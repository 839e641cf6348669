"""An fhe-server child process, for `make run` and for a Space that hosts its own server.

It is started as a separate program (`python -m server.cli serve`), so the demo itself never imports
server code, and it is stopped when the demo exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the demo process dies."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalServer:
    """`fhe-server serve` on a host and port, waited for until /healthz answers."""

    def __init__(self, host: str, port: int, url: str, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.url = url
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> LocalServer:
        """Start the server and wait until it answers; raise with its output if it dies."""
        command = [sys.executable, "-m", "server.cli", "serve", "--dev"]
        command += ["--host", self.host, "--port", str(self.port)]
        output = self.log_path.open("ab") if self.log_path else None
        self.process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"fhe-server exited with code {self.process.returncode} before answering"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"fhe-server did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
