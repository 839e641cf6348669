"""Real redis-server and `fhe-server worker` processes, for the scale-out tests and load script."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.server_process import die_with_parent, free_port, stop_process

BIN = Path(sys.executable).parent


@dataclass
class RedisProcess:
    """`redis-server` on a loopback port, without persistence (the test owns its lifetime)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.workdir)]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class WorkerProcess:
    """`fhe-server worker` against a Redis URL, with its own key cache."""

    redis_url: str
    models: Path
    data_dir: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def start(self, timeout: float = 120) -> WorkerProcess:
        import os

        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [str(BIN / "fhe-server"), "worker", "--redis", self.redis_url]
        command += ["--models", str(self.models), "--data-dir", str(self.data_dir)]
        command += ["--name", f"{self.name}@localhost"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            if " ready." in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool child, as a lost machine: its unacknowledged task
        must go to another worker."""
        if self.process is not None:
            import psutil

            children = psutil.Process(self.process.pid).children(recursive=True)
            self.process.kill()
            for child in children:
                child.kill()
            self.process.wait()
            psutil.wait_procs(children, timeout=10)

    def stop(self) -> None:
        stop_process(self.process)

    def task_ids(self, event: str) -> list[str]:
        """Ids of the run tasks this worker logged as `received` or `succeeded`."""
        found = re.findall(
            rf"fhe\.run_circuit\[([0-9a-f-]+)\] {event}", self.log.read_text(errors="replace")
        )
        return list(dict.fromkeys(found))
