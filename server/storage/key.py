"""One stored evaluation key as the stores answer it, an upload being received, the stores'
refusals, and key ids; shared by both key stores and the services above them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class KeyTooLarge(ValueError):
    """The upload exceeds the per-upload limit or the whole store."""


class StoreFull(RuntimeError):
    """Every stored key that could make room is pinned by work in flight; try again later."""


class QuotaExceeded(RuntimeError):
    """The owner's stored keys would pass its quota."""


class TooManyKeys(RuntimeError):
    """The owner holds as many keys as it may."""


class ReceivingFull(RuntimeError):
    """Uploads being received at once would pass their bound; try again shortly."""


def check_quota(
    owner_keys: int, owner_bytes: int, size: int, quota: int | None, max_keys: int | None
) -> None:
    """QuotaExceeded or TooManyKeys unless one more key of `size` bytes fits the owner's bounds."""
    if quota is not None and owner_bytes + size > quota:
        raise QuotaExceeded(
            f"this token holds {owner_bytes} bytes of keys; {size} more would pass its quota "
            f"of {quota}"
        )
    if max_keys is not None and owner_keys + 1 > max_keys:
        raise TooManyKeys(
            f"this token holds {owner_keys} evaluation keys, its limit; delete one it no longer "
            "needs (DELETE /v1/keys/{key_id}) before uploading another"
        )


class KeyPinned(RuntimeError):
    """The key cannot be deleted while queued or running work needs it."""


@dataclass(frozen=True)
class StoredKey:
    """One stored key: its id, size, the client specs it was checked for, its file (None in a
    shared database: workers read it by id), owners, and when it was stored and last used (by
    the owner it was asked for; without one, by anyone)."""

    key_id: str
    size: int
    client_specs: tuple[str, ...]
    path: Path | None
    owners: tuple[str, ...] = ()
    created: float | None = None
    last_used: float | None = None

    def fits(self, client_spec: str | None) -> bool:
        """True when the key has been checked against this client spec's key set."""
        return client_spec in self.client_specs

    def usable_by(self, owner: str | None) -> bool:
        """True when `owner` uploaded these bytes (any caller, without access control)."""
        return owner is None or owner in self.owners


def is_key_id(text: str) -> bool:
    """True when `text` has the shape of a key id (and is safe as a file name)."""
    return bool(KEY_ID_PATTERN.match(text))


@dataclass(frozen=True)
class Upload:
    """Evaluation keys received into a temporary file: its path, sha256 (the key id), size."""

    path: Path
    key_id: str
    size: int
