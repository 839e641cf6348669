"""Encrypted predictions as server jobs: submit every text, then poll and decrypt as jobs end.

The journal records each job before the next is submitted, so an interrupted client can still
fetch and decrypt what it started (`fhe-client jobs`, `fhe-client result`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from client.api import ServerError
from client.encrypted_model import EncryptedModel, Prediction
from client.journal import JobJournal, JournalEntry

FINISHED = ("done", "failed")


class JobFailed(RuntimeError):
    """The server ran the job and it failed; the message is the server's."""


def submit_texts(
    remote: EncryptedModel,
    texts: Sequence[str],
    journal: JobJournal,
    callback_url: str | None = None,
    progress: Callable[[JournalEntry], None] | None = None,
) -> list[JournalEntry]:
    """Encrypt each text here and queue it on the server; returns the journal entries."""
    entries = []
    for text in texts:
        entry = submit_text(remote, text, journal, callback_url)
        entries.append(entry)
        if progress is not None:
            progress(entry)
    return entries


def submit_text(
    remote: EncryptedModel,
    text: str,
    journal: JobJournal,
    callback_url: str | None = None,
    batch: str | None = None,
    row: int | None = None,
) -> JournalEntry:
    """Encrypt one text here, queue it on the server and journal it (with its batch row)."""
    encrypted = remote.encrypt(text)
    job = remote.submit(encrypted.ciphertext, callback_url)
    record = remote.cache.record()
    entry = JournalEntry(
        job_id=job["job_id"],
        server=remote.api.base_url,
        model=remote.name,
        text=text,
        submitted=time.time(),
        ciphertext_in_bytes=len(encrypted.ciphertext),
        batch=batch,
        row=row,
        key_id=record.key_id if record is not None else None,
    )
    journal.add(entry)
    return entry


def wait_for(
    remote: EncryptedModel, entries: Sequence[JournalEntry], poll_seconds: float = 0.5
) -> Iterator[tuple[JournalEntry, dict]]:
    """Poll the jobs until each has ended; yields each entry with its final status, as it ends."""
    pending = list(entries)
    while pending:
        still = []
        for entry in pending:
            status = remote.api.job(entry.job_id)
            if status["status"] in FINISHED:
                yield entry, status
            else:
                still.append(entry)
        pending = still
        if pending:
            time.sleep(poll_seconds)


def job_status(remote: EncryptedModel, entry: JournalEntry) -> dict | None:
    """A job's status on the current server, or None when it does not know the job (expired)."""
    try:
        return remote.api.job(entry.job_id)
    except ServerError as error:
        if error.code == "unknown_job":
            return None
        raise


def poll_once(
    remote: EncryptedModel, entries: Sequence[JournalEntry], patience: int = 4
) -> tuple[list[tuple[JournalEntry, dict | None]], list[JournalEntry]]:
    """One pass over jobs in submission order: (ended ones with their status, the others).

    Jobs run roughly in submission order, so the pass stops after `patience` unfinished jobs
    in a row: a long queue costs a few requests per pass, not one per job. A job the server no
    longer knows ends with status None.
    """
    ended: list[tuple[JournalEntry, dict | None]] = []
    waiting: list[JournalEntry] = []
    unfinished_in_a_row = 0
    for index, entry in enumerate(entries):
        if unfinished_in_a_row >= patience:
            waiting.extend(entries[index:])
            break
        status = job_status(remote, entry)
        if status is None or status["status"] in FINISHED:
            ended.append((entry, status))
            unfinished_in_a_row = 0
        else:
            waiting.append(entry)
            unfinished_in_a_row += 1
    return ended, waiting


def fetch_prediction(remote: EncryptedModel, entry: JournalEntry, status: dict) -> Prediction:
    """Download a finished job's encrypted result and decrypt it here."""
    if status["status"] == "failed":
        error = status.get("error") or {}
        raise JobFailed(f"job {entry.job_id} failed: {error.get('message')} ({error.get('code')})")
    started = time.perf_counter()
    try:
        answer = remote.api.job_result(entry.job_id)
    except ServerError as error:
        raise JobFailed(f"job {entry.job_id}: {error}") from None
    fetched = time.perf_counter() - started
    decrypted = remote.decrypt(answer.ciphertext)
    seconds = status.get("seconds") or {}
    return Prediction(
        text=entry.text,
        label=decrypted.label,
        scores=decrypted.scores,
        seconds={
            "queued": seconds.get("queued") or 0.0,
            "fhe": answer.fhe_seconds,
            "fetch": fetched,
            "decrypt": decrypted.seconds,
            "total": time.time() - entry.submitted,
        },
        bytes={
            "ciphertext_in": entry.ciphertext_in_bytes,
            "ciphertext_out": len(answer.ciphertext),
        },
    )
