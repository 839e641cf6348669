"""A throw-away PostgreSQL server, the shared state of the many-replica tests and benchmarks
(started in a temporary directory, never as a system service)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.local_server import die_with_parent, free_port, kill_process, log_tail


def _postgres_binary(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"{name} is missing: apt-get install postgresql")
    return found[-1]


@dataclass
class LocalPostgres:
    """A throw-away PostgreSQL server on a loopback port, in a directory of its own (fsync off).

    PostgreSQL refuses to run as root, so under root it runs as Debian's `postgres` user. Its
    owner decides its lifetime: `stop` then `start` keeps the data (an outage), `remove` deletes
    it.
    """

    port: int = field(default_factory=free_port)
    root: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its `postgres` database, as superuser `fhe` (trusted locally)."""
        return f"postgresql://fhe@127.0.0.1:{self.port}/postgres"

    def _account(self) -> dict[str, object]:
        """Popen arguments that run a program as `postgres` when this process is root."""
        if os.getuid() != 0:
            return {}
        account = pwd.getpwnam("postgres")
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _prepare(self) -> Path:
        self.root = Path(tempfile.mkdtemp(prefix="fhe-postgres-"))
        account = self._account()
        if account:
            os.chown(self.root, account["user"], account["group"])  # type: ignore[arg-type]
        initdb = [_postgres_binary("initdb"), "-D", str(self.root / "data"), "-U", "fhe"]
        initdb += ["--auth=trust", "--encoding=UTF8", "--no-sync"]
        done = subprocess.run(
            initdb, capture_output=True, text=True, check=False, timeout=120, **account
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        return self.root

    def answers(self) -> bool:
        """Whether it accepts TCP connections."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """Start the server (making its directory the first time) and wait until it listens."""
        root = self.root or self._prepare()
        command = [_postgres_binary("postgres"), "-D", str(root / "data"), "-p", str(self.port)]
        command += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}"]
        command += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=200"]
        log = root / "postgres.log"
        output = log.open("ab")
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
                **self._account(),
            )
        finally:
            output.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start: {log_tail(log)}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server at once (fast shutdown: open connections are cut), keeping its data."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        kill_process(self.process)
        self.process = None

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
