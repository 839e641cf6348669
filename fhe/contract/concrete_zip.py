"""The one reader of Concrete-ML's zips (`client.zip`, `server.zip`, the skops archive inside
`serialized_processing.json`) and of the `versions.json` they record.

A zip comes from elsewhere (a server sends client.zip, an operator drops server.zip into the
models directory), so it is bounded before any member is inflated: how many members, how large
each one and all of them unpack, and no member name that would point outside the archive.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

MAX_MEMBERS = 256
"""Concrete-ML writes a handful of members; a skops archive a few per object."""
MAX_MEMBER_BYTES = 64 << 20
"""No member of a bundle we serve is near this (the 100-tree circuit's MLIR is 12 kB)."""
MAX_TOTAL_BYTES = 256 << 20
"""All members together, unpacked."""
VERSIONS_FILE = "versions.json"
CLIENT_SPECS = "client.specs.json"
PROCESSING_FILE = "serialized_processing.json"


class UnreadableZip(ValueError):
    """A zip that is broken, or over the bounds, or names a member outside itself."""


def _safe_name(name: str) -> bool:
    """A member name that stays inside the archive: relative, no `..`, no drive or backslash."""
    path = PurePosixPath(name)
    return (
        bool(name)
        and not path.is_absolute()
        and ".." not in path.parts
        and "\\" not in name
        and ":" not in path.parts[0]
    )


def read_members(
    source: Path | bytes | BinaryIO,
    names: Iterable[str] | None = None,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_members: int = MAX_MEMBERS,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> dict[str, bytes]:
    """The bytes of the named members that the zip (a file, its bytes, or a seekable binary
    file object) holds, of every member when `names` is None, read in the order named;
    UnreadableZip when the archive is broken or over a bound."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as zf:
            listed = zf.infolist()
            if len(listed) > max_members:
                raise UnreadableZip(f"{len(listed)} members, over {max_members}")
            unsafe = [info.filename for info in listed if not _safe_name(info.filename)]
            if unsafe:
                raise UnreadableZip(f"member names outside the archive: {unsafe[:3]}")
            total = sum(info.file_size for info in listed)
            if total > max_total_bytes:
                raise UnreadableZip(f"unpacks to {total} bytes, over {max_total_bytes} bytes")
            by_name = {info.filename: info for info in listed}
            wanted = list(by_name) if names is None else [n for n in names if n in by_name]
            files = {}
            for name in wanted:
                info = by_name[name]
                if info.file_size > max_member_bytes:
                    raise UnreadableZip(
                        f"{name} is over {max_member_bytes} bytes ({info.file_size} unpacked)"
                    )
                with zf.open(info) as member:
                    data = member.read(max_member_bytes + 1)
                if len(data) > max_member_bytes:
                    raise UnreadableZip(f"{name} is over {max_member_bytes} bytes")
                files[name] = data
            return files
    except UnreadableZip:
        raise
    except (OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error) as error:
        raise UnreadableZip(f"unreadable zip: {error}") from None


def member_json(files: dict[str, bytes], name: str) -> Any:
    """A member parsed as JSON; KeyError when absent, UnreadableZip when not JSON."""
    try:
        return json.loads(files[name])
    except ValueError as error:
        raise UnreadableZip(f"{name} is not JSON: {error}") from None


def recorded_versions(files: dict[str, bytes]) -> dict[str, str]:
    """The library versions a zip's `versions.json` records (package: version); KeyError when
    it records none, UnreadableZip when the file is not a JSON object."""
    versions = member_json(files, VERSIONS_FILE)
    if not isinstance(versions, dict):
        raise UnreadableZip(f"{VERSIONS_FILE} is not an object")
    return {str(key): str(value) for key, value in versions.items()}


@dataclass(frozen=True)
class ClientZip:
    """The members of a client.zip that say what its circuit takes and how to read its output."""

    files: dict[str, bytes]

    def specs(self) -> Any:
        """The circuit's `client.specs.json`; KeyError when absent, UnreadableZip when not JSON."""
        return member_json(self.files, CLIENT_SPECS)

    def processing(self) -> Any:
        """Concrete-ML's `serialized_processing.json` (quantizers, model type)."""
        return member_json(self.files, PROCESSING_FILE)

    def versions(self) -> dict[str, str]:
        """The library versions it records (`recorded_versions`)."""
        return recorded_versions(self.files)


def read_client_zip(path: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> ClientZip:
    """A client.zip's specs, processing and versions members, bounded (`read_members`)."""
    return ClientZip(
        read_members(path, (CLIENT_SPECS, PROCESSING_FILE, VERSIONS_FILE), max_member_bytes)
    )
