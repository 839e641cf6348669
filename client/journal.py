"""The client's record of the jobs it submitted, so results can be fetched and decrypted later.

It lives beside the keys (`<cache>/jobs.jsonl`, readable by the user only) because it holds the
texts, which never leave this machine; the server only knows job ids and ciphertexts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class JournalEntry:
    """One submitted job: where, for which model, and the text it encrypts.

    Jobs of a CSV batch (`predict --async --output`) also name the batch (the output file), the
    input row and the key they were encrypted under, so that a rerun resumes instead of
    resubmitting.
    """

    job_id: str
    server: str
    model: str
    text: str
    submitted: float
    ciphertext_in_bytes: int
    batch: str | None = None
    row: int | None = None
    key_id: str | None = None


class JobJournal:
    """Append-only JSON lines of submitted jobs."""

    def __init__(self, cache_root: Path) -> None:
        self.path = cache_root / "jobs.jsonl"

    def add(self, entry: JournalEntry) -> None:
        """Record a job as soon as the server has accepted it.

        A line cut short by a killed client is ended first, so that it cannot swallow this one.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(asdict(entry)) + "\n").encode()
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(descriptor, line)
        finally:
            os.close(descriptor)

    def entries(self, server: str | None = None) -> list[JournalEntry]:
        """Every recorded job (of one server when given), oldest first."""
        if not self.path.is_file():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = JournalEntry(**json.loads(line))
            except (ValueError, TypeError):
                continue
            if server is None or entry.server == server:
                found.append(entry)
        return found

    def batch(self, batch: str) -> dict[int, JournalEntry]:
        """The newest job of each row of one batch, by row number."""
        return {e.row: e for e in self.entries() if e.batch == batch and e.row is not None}

    def find(self, job_id: str) -> JournalEntry | None:
        """The entry of one job id, or None."""
        return next((e for e in self.entries() if e.job_id == job_id), None)
