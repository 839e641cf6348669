"""The tests' fhe-server: the package's harness, its output in a log file beside its data."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from client.local_server import LocalServer

BIN = Path(sys.executable).parent
"""The console scripts of this virtualenv (fhe-client, fhe-server)."""


@dataclass
class ServerProcess(LocalServer):
    """`fhe-server serve` over `models` and `data_dir`, logging to server-<port>.log beside it."""

    def __post_init__(self) -> None:
        if self.log is None and self.data_dir is not None:
            self.log = self.data_dir.parent / f"server-{self.port}.log"
