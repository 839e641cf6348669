"""Encrypted predictions as server jobs, and the journal of the jobs this client submitted.

The pieces of a job: send one, poll (`poll_once`, the one poller), fetch and decrypt; the
command line's batches put them together in `client.batch`. The journal records each job before the
next is submitted, so an interrupted client can still fetch and decrypt what it started
(`fhe-client jobs`, `fhe-client result`). It lives beside the keys (`<cache>/jobs.jsonl`,
readable by the user only) because it holds the texts, which never leave this machine; the server
only knows job ids and ciphertexts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from client.encrypted_model import Encrypted, EncryptedModel, Prediction
from client.errors import JobFailed, ServerError
from fhe.contract.wire import JobStatus


@dataclass(frozen=True)
class JournalEntry:
    """One submitted job: where, for which model, and the input it encrypts (`text`: the text, or
    a row or array as JSON, which `input` then holds as is).

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
    input: Any = None

    @property
    def item(self) -> Any:
        """The input as it was given: a text, a row or an array."""
        return self.text if self.input is None else self.input


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


def send_job(
    remote: EncryptedModel,
    item: Any,
    encrypted: Encrypted,
    journal: JobJournal,
    callback_url: str | None = None,
    batch: str | None = None,
    row: int | None = None,
) -> JournalEntry:
    """Queue one encrypted input on the server and journal it (with its batch row)."""
    job = remote.submit(encrypted.ciphertext, callback_url)
    record = remote.cache.record()
    entry = JournalEntry(
        job_id=job.job_id,
        server=remote.api.base_url,
        model=remote.name,
        text=item if isinstance(item, str) else json.dumps(item),
        submitted=time.time(),
        ciphertext_in_bytes=len(encrypted.ciphertext),
        batch=batch,
        row=row,
        key_id=record.key_id if record is not None else None,
        input=None if isinstance(item, str) else item,
    )
    journal.add(entry)
    return entry


def job_status(remote: EncryptedModel, entry: JournalEntry) -> JobStatus | None:
    """A job's status on the current server, or None when it does not know the job (expired)."""
    try:
        return remote.api.job(entry.job_id)
    except ServerError as error:
        if error.code == "unknown_job":
            return None
        raise


def poll_once(
    remote: EncryptedModel, entries: Sequence[JournalEntry], patience: int = 4
) -> tuple[list[tuple[JournalEntry, JobStatus | None]], list[JournalEntry]]:
    """One pass over jobs in submission order: (ended ones with their status, the others).

    Jobs run roughly in submission order, so the pass stops after `patience` unfinished jobs
    in a row: a long queue costs a few requests per pass, not one per job. A job the server no
    longer knows ends with status None.
    """
    ended: list[tuple[JournalEntry, JobStatus | None]] = []
    waiting: list[JournalEntry] = []
    unfinished_in_a_row = 0
    for index, entry in enumerate(entries):
        if unfinished_in_a_row >= patience:
            waiting.extend(entries[index:])
            break
        status = job_status(remote, entry)
        if status is None or status.ended:
            ended.append((entry, status))
            unfinished_in_a_row = 0
        else:
            waiting.append(entry)
            unfinished_in_a_row += 1
    return ended, waiting


def fetch_prediction(
    remote: EncryptedModel, entry: JournalEntry, status: JobStatus | None
) -> Prediction:
    """Download a finished job's encrypted result and decrypt it here."""
    if status is None:
        raise JobFailed(f"job {entry.job_id} expired or was lost")
    if status.status == "failed":
        error = status.error
        message, code = (error.message, error.code) if error else (None, None)
        raise JobFailed(f"job {entry.job_id} failed: {message} ({code})")
    started = time.perf_counter()
    try:
        answer = remote.api.job_result(entry.job_id)
    except ServerError as error:
        raise JobFailed(f"job {entry.job_id}: {error}") from None
    fetched = time.perf_counter() - started
    decrypted = remote.decrypt(answer.ciphertext)
    seconds = {
        "queued": status.seconds.queued,
        "fhe": answer.fhe_seconds,
        "fetch": fetched,
        "decrypt": decrypted.seconds,
        "total": time.time() - entry.submitted,
    }
    return Prediction.of(
        entry.item, decrypted, seconds, entry.ciphertext_in_bytes, len(answer.ciphertext)
    )
