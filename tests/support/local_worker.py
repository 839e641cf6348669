"""A real `fhe-server worker` process (Celery) for the scale-out tests and benchmarks."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.local_server import SERVER, kill_process, log_tail, spawn, stop_process


@dataclass
class LocalWorker:
    """`fhe-server worker` against a Redis URL, with its own key cache and log in `data_dir`."""

    redis_url: str
    models: Path
    data_dir: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        """The worker's log file."""
        return self.data_dir / f"{self.name}.log"

    def start(self, timeout: float = 120.0) -> LocalWorker:
        """Start the worker and wait until Celery logs that it is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [*SERVER, "worker", "--redis", self.redis_url, "--models", str(self.models)]
        command += ["--data-dir", str(self.data_dir), "--name", f"{self.name}@localhost"]
        self.process = spawn(command, self.log, self.env)
        deadline = time.monotonic() + timeout
        while " ready." not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"worker {self.name} not ready: {log_tail(self.log)}")
            time.sleep(0.2)
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool child, as a lost machine: its unacknowledged task goes
        to another worker."""
        kill_process(self.process)

    def stop(self) -> None:
        """Stop the worker (SIGTERM: Celery's warm shutdown)."""
        stop_process(self.process)

    def task_ids(self, event: str) -> list[str]:
        """Ids of the run tasks this worker logged as `received` or `succeeded`."""
        found = re.findall(
            rf"fhe\.run_circuit\[([0-9a-f-]+)\] {event}", self.log.read_text(errors="replace")
        )
        return list(dict.fromkeys(found))
