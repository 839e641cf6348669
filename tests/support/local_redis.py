"""A throw-away redis-server for the scale-out tests and benchmarks (the Celery broker)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.local_server import free_port, log_tail, spawn, stop_process


@dataclass
class LocalRedis:
    """`redis-server` on a loopback port, without persistence (its owner decides its lifetime)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    args: list[str] = field(default_factory=list)
    """More redis-server options (`--maxmemory 64mb`, `--requirepass ...`)."""

    @property
    def url(self) -> str:
        """The Redis URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        """Whether it answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                # A Redis with a password answers NOAUTH: it is up all the same.
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> LocalRedis:
        """Start redis-server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.workdir), *self.args]
        self.process = spawn(command, self.workdir / "redis.log")
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log_tail(self.workdir / "redis.log")
                raise RuntimeError(f"redis-server did not answer: {tail}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """Stop redis-server."""
        stop_process(self.process)
