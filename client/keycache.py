"""The client's on-disk cache: client spec and keys per (model, client spec hash).

Layout: `<root>/<model>/<spec sha256>/client.zip`, `keys/` (Concrete's key set, including the
private key, which never leaves this directory), `evaluation_keys.bin` and `key.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fhe.contract.atomic import write_atomic


@dataclass(frozen=True)
class KeyRecord:
    """What the client remembers about its evaluation keys."""

    key_id: str
    evaluation_key_bytes: int
    keygen_seconds: float


class KeyCache:
    """Paths and records of one model's cached spec and keys."""

    def __init__(self, root: Path, model: str, client_spec: str) -> None:
        self.dir = root / model / client_spec
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def client_zip(self) -> Path:
        """The cached client spec."""
        return self.dir / "client.zip"

    @property
    def key_dir(self) -> Path:
        """Concrete's key set cache (private key included)."""
        return self.dir / "keys"

    @property
    def evaluation_keys(self) -> Path:
        """The serialized evaluation keys, as uploaded."""
        return self.dir / "evaluation_keys.bin"

    def record(self) -> KeyRecord | None:
        """The stored key record, or None when keys were never generated here, or when the key
        set it describes is gone (new keys are then made rather than a record that lies kept)."""
        path = self.dir / "key.json"
        if not path.is_file() or not self.evaluation_keys.is_file() or not self.key_dir.is_dir():
            return None
        return KeyRecord(**json.loads(path.read_text()))

    def forget(self) -> None:
        """Drop the record before its key set is replaced: an interrupted replacement then
        leaves no record naming keys that are gone, and the next run makes and uploads anew."""
        (self.dir / "key.json").unlink(missing_ok=True)

    def save(self, record: KeyRecord, serialized_keys: bytes) -> None:
        """Remember the evaluation keys and their id; the record is written last, whole."""
        write_atomic(self.evaluation_keys, serialized_keys, sync=False)
        write_atomic(self.dir / "key.json", json.dumps(asdict(record)), sync=False)
