"""Jobs the tests submit and await without the command line's batch: the product's pieces
(`send_job`, `poll_once`) without its back-pressure, which `client.batch.run_as_jobs` adds."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from client.batch import POLL_SECONDS
from client.encrypted_model import EncryptedModel
from client.jobs import JobJournal, JournalEntry, poll_once, send_job
from fhe.contract.wire import JobStatus


def submit_items(
    remote: EncryptedModel, items: Sequence[Any], journal: JobJournal
) -> list[JournalEntry]:
    """Encrypt each input here (texts embedded in batches) and queue it on the server; returns
    the journal entries. No waiting on a full queue: a refusal raises, as the tests want."""
    return [
        send_job(remote, item, remote.encrypt(item, prepared), journal)
        for item, prepared in zip(items, remote.prepare_ahead(items), strict=True)
    ]


def wait_for(
    remote: EncryptedModel, entries: Sequence[JournalEntry], poll_seconds: float = POLL_SECONDS
) -> Iterator[tuple[JournalEntry, JobStatus | None]]:
    """Poll the jobs with the client's one poller (`poll_once`) until each has ended; yields each
    entry with its final status (None: the server no longer knows it), as it ends."""
    pending = list(entries)
    while pending:
        ended, pending = poll_once(remote, pending)
        yield from ended
        if pending:
            time.sleep(poll_seconds)
