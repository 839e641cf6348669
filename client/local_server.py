"""A real fhe-server process on this machine, and the process handling it takes.

The harness of `fhe-client demo --start-server`, which the tests and benchmarks use too (their own
Redis, Postgres and Celery worker harnesses are in tests/support). Each process is
started as a program (`python -m server.cli ...`), so the client never imports server code. Each
runs in a process group of its own, with the processes it starts (the API's FHE workers): stopping
or killing it reaches them too, and a Ctrl-C in a terminal reaches only the program that started
it, which decides when to stop it. Each also receives SIGTERM when the thread that started it
exits (PR_SET_PDEATHSIG), even by a crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SERVER = [sys.executable, "-m", "server.cli"]
"""fhe-server as a module of this interpreter: works installed and in an assembled Space alike."""


_HANDED_OUT: set[int] = set()
"""Ports this process was given: the kernel may hand a just-closed port out again, and two
callers then bind (or point an upstream at) the same port."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now, never one given before here."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _prctl(option: int, value: int) -> None:
    """Linux's prctl(2); nothing elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent thread exits."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def adopt_orphans() -> None:
    """Become the parent of descendants whose own parent exits, so that reap_children waits for
    them (instead of the machine's init)."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def reap_children(timeout: float) -> None:
    """Wait, for at most `timeout` seconds, until this process has no child left, adopted orphans
    included. Call it only once every subprocess.Popen of this process has been waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


def spawn(
    command: list[str], log: Path | None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `command` in a process group of its own, its output appended to `log` (or ours)."""
    output = log.open("ab") if log is not None else None
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            env={**os.environ, **(env or {})},
            process_group=0,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    finally:
        if output is not None:
            output.close()


def log_tail(log: Path | None, chars: int = 3000) -> str:
    """The end of a process's log, or where to find its output when it has none."""
    if log is None or not log.is_file():
        return "its output is above"
    return log.read_text(errors="replace")[-chars:]


def wait_for_url(
    url: str, process: subprocess.Popen, log: Path | None, timeout: float, name: str = "process"
) -> None:
    """Wait until GET `url` answers 200; raise RuntimeError with the log if the process exits
    first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with code {process.returncode} before {url} answered: "
                f"{log_tail(log)}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {log_tail(log)}")


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send `signum` to the process group led by `process`, if there is still one."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def kill_process(process: subprocess.Popen | None) -> None:
    """SIGKILL a process and its group, and reap it."""
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    _signal_group(process, signal.SIGKILL)
    process.wait()


def stop_processes(processes: list[subprocess.Popen | None], timeout: float) -> None:
    """SIGTERM processes all at once; SIGKILL those still running `timeout` seconds later.

    Processes of their groups that outlive them (workers they did not stop) are killed as well.
    """
    started = [process for process in processes if process is not None]
    for process in started:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in started:
        kill_process(process)


def stop_process(process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM a process; SIGKILL it and its group if it is still running `timeout` s later."""
    stop_processes([process], timeout)


@dataclass
class LocalServer:
    """`fhe-server serve` on a port of this machine, waited for until /healthz answers.

    Development mode (no API tokens) unless `env` sets FHE_SERVER_TOKENS. Unset `models` and
    `data_dir` come from the server's own settings (FHE_SERVER_* variables, then its defaults).
    """

    models: Path | None = None
    data_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    args: list[str] = field(default_factory=list)
    log: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's URL as seen from this machine (loopback when it listens everywhere)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        """The `fhe-server serve` command line."""
        command = [*SERVER, "serve", "--host", self.host, "--port", str(self.port)]
        if self.models is not None:
            command += ["--models", str(self.models)]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir)]
        return [*command, *self.args]

    def start(self, timeout: float = 120.0) -> LocalServer:
        """Start the server and wait until it answers; raise RuntimeError with its log if not."""
        env = {"FHE_SERVER_DEV_MODE": "false" if "FHE_SERVER_TOKENS" in self.env else "true"}
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(self.command(), self.log, {**env, **self.env})
        started = time.monotonic()
        try:
            wait_for_url(f"{self.url}/healthz", self.process, self.log, timeout, "fhe-server")
            self.wait_compiled(timeout - (time.monotonic() - started))
        except BaseException:
            self.kill()
            raise
        return self

    def wait_compiled(self, timeout: float) -> None:
        """Wait until the server has tried every circuit it serves (its /readyz no longer says
        it is compiling); ready or not for another reason is the caller's to check."""
        deadline = time.monotonic() + max(timeout, 1.0)
        while time.monotonic() < deadline:
            try:
                if "compiling circuits" not in httpx.get(f"{self.url}/readyz", timeout=5).text:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fhe-server did not compile its circuits: {log_tail(self.log)}")

    def alive(self) -> bool:
        """Whether the server process is running."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM); SIGKILL it and its workers if it takes over `timeout` s."""
        stop_process(self.process, timeout)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash or a lost machine would stop them."""
        kill_process(self.process)
        self.process = None
