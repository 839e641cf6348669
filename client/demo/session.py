"""One browser session's client for one model: its own private key, its ciphertexts, its results.

Each session keeps its keys in a directory of its own, so two people on the demo at once never
share or overwrite each other's keys; the directory is removed when the session ends. The input
is whatever the model takes: a text, or a table row (column: value).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import FHEServerAPI, PredictAnswer
from client.demo.messages import StepOrderError
from client.encrypted_model import Decrypted, Encrypted, EncryptedModel, KeyInfo
from client.settings import ClientSettings


@dataclass(frozen=True)
class RunResult:
    """The server's encrypted answer and what it cost."""

    answer: PredictAnswer
    round_trip_seconds: float


class DemoSession:
    """The client side of one browser session on one model, step by step."""

    def __init__(self, server_url: str, model: str, root: Path, noun: str = "message") -> None:
        self.noun = noun
        self.dir = Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self.api = FHEServerAPI(server_url)
        self.remote = EncryptedModel(
            self.api, model, self.dir, embedder_cache=ClientSettings().embedders_dir()
        )
        self.keys: KeyInfo | None = None
        self.item: Any = None
        self.encrypted: Encrypted | None = None
        self.result: RunResult | None = None
        self._lock = threading.RLock()
        self.closed = False

    def generate_keys(self) -> KeyInfo:
        """Make a fresh key pair for this session and upload the evaluation keys."""
        with self._lock:
            self.keys = self.remote.keys(force=True)
            self._forget_input()
            return self.keys

    def encrypt(self, item: str | dict[str, Any]) -> Encrypted:
        """Prepare (embed a text, preprocess a row), quantize and encrypt it with this session's
        key."""
        if isinstance(item, str) and not item.strip():
            raise StepOrderError("Type a message first.")
        if isinstance(item, dict) and not item:
            raise StepOrderError("Fill in the row first.")
        with self._lock:
            if self.keys is None:
                raise StepOrderError("Generate the keys first (step 1).")
            self.remote.checked_items([item])
            self.encrypted = self.remote.encrypt(item)
            self.item = item
            self.result = None
            return self.encrypted

    def run(self, waiting: Callable[[float], None] | None = None) -> RunResult:
        """Send the ciphertext to the server; `waiting(seconds)` is called while FHE runs."""
        with self._lock:
            if self.encrypted is None:
                raise StepOrderError(f"Encrypt a {self.noun} first (step 2).")
            ciphertext = self.encrypted.ciphertext
            started = time.perf_counter()
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(self.remote.run, ciphertext)
                while not future.done():
                    if waiting is not None:
                        waiting(time.perf_counter() - started)
                    time.sleep(0.1)
                answer = future.result()
            self.result = RunResult(answer, time.perf_counter() - started)
            return self.result

    def decrypt(self) -> Decrypted:
        """Decrypt the server's answer with this session's private key."""
        with self._lock:
            if self.result is None:
                raise StepOrderError("Run the model on the server first (step 3).")
            return self.remote.decrypt(self.result.answer.ciphertext)

    def _forget_input(self) -> None:
        """Drop the input, ciphertext and result of an earlier step (new keys or input)."""
        with self._lock:
            self.item = None
            self.encrypted = None
            self.result = None

    def close(self) -> None:
        """Delete this session's keys and close its connection (twice is harmless)."""
        with self._lock:
            self.closed = True
            self.keys = None
            self._forget_input()
            self.api.close()
            shutil.rmtree(self.dir, ignore_errors=True)
