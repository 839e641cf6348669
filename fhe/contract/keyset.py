"""What a circuit's evaluation keys must look like, and whether uploaded keys do.

A client spec (`client.zip`) describes the key set its circuit needs: each bootstrap,
key-switch and packing key-switch key with its ids and parameters. Serialized evaluation keys
(Concrete's server keyset, a Cap'n Proto message) carry the same description beside each key's
payload. Comparing the two before a circuit runs keeps keys made for another circuit, or crafted
ones, from reaching Concrete, which aborts the whole process on a mismatch instead of raising.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fhe.contract.concrete_zip import CLIENT_SPECS, member_json, read_members

SCHEMA = Path(__file__).with_name("keyset.capnp")
SEED_BYTES = 16
"""A seeded (compressed) key stores the 128-bit seed of its masks beside the bodies."""
CIPHERTEXT_OVERHEAD_BYTES = 4096
"""Framing of a serialized ciphertext beyond its raw payload (Concrete's is about 270 bytes)."""

_BOOTSTRAP_FIELDS = (
    "levelCount",
    "baseLog",
    "glweDimension",
    "polynomialSize",
    "inputLweDimension",
    "integerPrecision",
)
_KEYSWITCH_FIELDS = (
    "levelCount",
    "baseLog",
    "inputLweDimension",
    "outputLweDimension",
    "integerPrecision",
)
_PACKING_FIELDS = (
    "levelCount",
    "baseLog",
    "glweDimension",
    "polynomialSize",
    "inputLweDimension",
    "innerLweDimension",
    "integerPrecision",
)
_KINDS = {
    "lweBootstrapKeys": ("bootstrap key", _BOOTSTRAP_FIELDS),
    "lweKeyswitchKeys": ("key-switch key", _KEYSWITCH_FIELDS),
    "packingKeyswitchKeys": ("packing key-switch key", _PACKING_FIELDS),
}


class MalformedKeys(ValueError):
    """The bytes are not a serialized Concrete server keyset."""


@dataclass(frozen=True)
class KeyDescription:
    """One evaluation key as described: its kind, ids, parameters, compression, payload bytes."""

    kind: str
    key_id: int
    input_id: int
    output_id: int
    params: tuple[tuple[str, int], ...]
    compression: str
    key_type: str = "binary"
    payload_bytes: int | None = None

    def label(self) -> str:
        """How a person names this key in a message."""
        return f"{_KINDS[self.kind][0]} {self.key_id}"

    def expected_payload_bytes(self) -> int | None:
        """The payload size these parameters imply (known for seeded keys; None otherwise)."""
        if self.compression != "seed":
            return None
        p = dict(self.params)
        if self.kind == "lweBootstrapKeys":
            words = (
                p["inputLweDimension"]
                * (p["glweDimension"] + 1)
                * p["levelCount"]
                * p["polynomialSize"]
            )
        elif self.kind == "lweKeyswitchKeys":
            words = p["inputLweDimension"] * p["levelCount"]
        else:
            return None
        return words * p["integerPrecision"] // 8 + SEED_BYTES


@dataclass(frozen=True)
class KeysetDescription:
    """Every evaluation key a circuit needs (from a client spec) or a key upload holds."""

    keys: tuple[KeyDescription, ...]

    def count(self, kind: str) -> int:
        """How many keys of one kind."""
        return sum(1 for key in self.keys if key.kind == kind)

    def differences(self, uploaded: KeysetDescription) -> list[str]:
        """What in `uploaded` differs from this expected key set, one phrase each (empty: fits)."""
        found: list[str] = []
        for kind, (noun, _) in _KINDS.items():
            want, have = self.count(kind), uploaded.count(kind)
            if want != have:
                found.append(f"{want} {noun}s expected, {have} uploaded")
        uploaded_by_id = {(key.kind, key.key_id): key for key in uploaded.keys}
        for key in self.keys:
            other = uploaded_by_id.get((key.kind, key.key_id))
            if other is None:
                found.append(f"{key.label()} is missing")
                continue
            if (other.input_id, other.output_id) != (key.input_id, key.output_id):
                found.append(
                    f"{key.label()} maps secret key {other.input_id}->{other.output_id}, "
                    f"expected {key.input_id}->{key.output_id}"
                )
            for (name, want), (_, have) in zip(key.params, other.params, strict=True):
                if want != have:
                    found.append(f"{key.label()} has {name} {have}, expected {want}")
            if other.key_type != key.key_type:
                found.append(f"{key.label()} has {other.key_type} keys, expected {key.key_type}")
            if other.compression != key.compression:
                found.append(
                    f"{key.label()} is compressed {other.compression!r}, "
                    f"expected {key.compression!r}"
                )
            expected_bytes = key.expected_payload_bytes()
            if (
                expected_bytes is not None
                and other.compression == key.compression
                and other.payload_bytes != expected_bytes
            ):
                found.append(
                    f"{key.label()} holds {other.payload_bytes} bytes, its parameters "
                    f"need {expected_bytes}"
                )
        return found


def _described(kind: str, entry: dict[str, Any]) -> KeyDescription:
    params = entry.get("params", {})
    return KeyDescription(
        kind=kind,
        key_id=int(entry.get("id", 0)),
        input_id=int(entry.get("inputId", 0)),
        output_id=int(entry.get("outputId", 0)),
        params=tuple((name, int(params.get(name, 0))) for name in _KINDS[kind][1]),
        compression=str(entry.get("compression", "none")),
        key_type=str(params.get("keyType", "binary")),
    )


def client_spec_keyset(specs: dict[str, Any]) -> KeysetDescription:
    """The key set a parsed `client.specs.json` asks for; ValueError when it is not shaped as
    Concrete writes it (a list or a number where an object is expected, say)."""
    try:
        keyset = specs.get("keyset", {})
        return KeysetDescription(
            tuple(_described(kind, entry) for kind in _KINDS for entry in keyset.get(kind, []))
        )
    except (AttributeError, TypeError, OverflowError) as error:
        raise ValueError(f"client.specs.json has a malformed key set ({error})") from None


def read_client_specs(client_zip: Path) -> dict[str, Any]:
    """The parsed `client.specs.json` inside a bundle's `client.zip` (KeyError when it has none,
    UnreadableZip when it is broken or over the reader's bounds)."""
    return member_json(read_members(client_zip, [CLIENT_SPECS]), CLIENT_SPECS)


def encrypted_input(specs: dict[str, Any]) -> dict[str, Any]:
    """The type of the one encrypted input of a one-circuit program, from a parsed
    `client.specs.json` (its `lweCiphertext`: shape and integer encoding).

    Raises ValueError for another layout or a clear input.
    """
    try:
        (circuit,) = specs["circuits"]
        (gate,) = circuit["inputs"]
        encrypted = gate["typeInfo"]["lweCiphertext"]
    except (KeyError, TypeError, ValueError):
        encrypted = None
    if not isinstance(encrypted, dict):
        raise ValueError("the circuit does not take one encrypted input")
    return encrypted


def encrypted_input_dimensions(specs: dict[str, Any]) -> list[int]:
    """The shape of the circuit's encrypted input, batch dimension included (or ValueError)."""
    try:
        return [int(d) for d in encrypted_input(specs)["abstractShape"]["dimensions"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError("the circuit does not take one encrypted input") from None


@lru_cache(maxsize=1)
def _schema() -> Any:
    import capnp

    capnp.remove_import_hook()
    return capnp.load(str(SCHEMA))


MAX_SEGMENTS = 512
"""Cap'n Proto's own readers refuse a message of more segments than this."""
_KJ_LOCATION = re.compile(r"^\S+\.c\+\+:\d+: \w+: ")


def short_reason(error: object) -> str:
    """A library error as one short phrase: no C++ source location, stack or internal check."""
    text = str(getattr(error, "description", None) or error).split("\nstack:", 1)[0]
    text = _KJ_LOCATION.sub("", text.strip())
    if text.startswith("expected ") and "; " in text:
        text = text.split("; ", 1)[1]
    return text.splitlines()[0].strip() if text.strip() else "unreadable"


def message_size(header: bytes) -> int:
    """The bytes of the Cap'n Proto message whose segment table begins `header` (at least its
    first 4 bytes; MalformedKeys when the table itself is cut short or impossible)."""
    if len(header) < 4:
        raise MalformedKeys("not serialized evaluation keys: too short for a segment table")
    (count,) = struct.unpack_from("<I", header)
    count += 1
    if count > MAX_SEGMENTS:
        raise MalformedKeys(f"not serialized evaluation keys: a segment table of {count} segments")
    table = (4 + 4 * count + 7) // 8 * 8
    if len(header) < 4 + 4 * count:
        raise MalformedKeys("not serialized evaluation keys: the segment table is cut short")
    sizes = struct.unpack_from(f"<{count}I", header, 4)
    return table + 8 * sum(sizes)


def check_framing(header: bytes, size: int) -> None:
    """MalformedKeys unless a message of `size` bytes beginning with `header` is exactly one Cap'n
    Proto message: nothing missing, nothing after it."""
    expected = message_size(header)
    if expected > size:
        raise MalformedKeys(
            f"not serialized evaluation keys: the segment table announces {expected} bytes, "
            f"{size} were sent"
        )
    if expected < size:
        raise MalformedKeys(f"{size - expected} bytes follow the serialized keys")


def uploaded_keyset(data: bytes | mmap.mmap) -> KeysetDescription:
    """The description of every key in serialized evaluation keys; MalformedKeys otherwise.

    Only the descriptions and payload lengths are read, never the payload bytes themselves.
    """
    check_framing(bytes(data[: 4 + 4 * MAX_SEGMENTS]), len(data))
    try:
        import capnp

        words = len(data) // 8 + 1024
        with _schema().ServerKeyset.from_bytes(data, traversal_limit_in_words=words) as root:
            keys = []
            for kind in _KINDS:
                for key in getattr(root, kind):
                    info = key.info
                    params = info.params
                    keys.append(
                        KeyDescription(
                            kind=kind,
                            key_id=info.id,
                            input_id=info.inputId,
                            output_id=info.outputId,
                            params=tuple(
                                (name, int(getattr(params, name))) for name in _KINDS[kind][1]
                            ),
                            compression=str(info.compression),
                            key_type=str(params.keyType),
                            payload_bytes=sum(len(blob) for blob in key.payload.data),
                        )
                    )
            return KeysetDescription(tuple(keys))
    except (capnp.KjException, ValueError, AttributeError) as error:
        raise MalformedKeys(f"not serialized evaluation keys: {short_reason(error)}") from None


def uploaded_keyset_file(path: Path) -> KeysetDescription:
    """`uploaded_keyset` of a file, mapped rather than read: junk is refused from its segment
    table alone, and a well-framed file's payload pages are never touched (nor held in memory)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        check_framing(handle.read(4 + 4 * MAX_SEGMENTS), size)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return uploaded_keyset(mapped)


def max_ciphertext_bytes(specs: dict[str, Any]) -> int:
    """The largest serialized input ciphertext the spec's circuit can take: its raw payload
    (every input's shape times the integer width) plus framing; ValueError when the spec is not
    shaped as Concrete writes it."""
    total = 0
    try:
        for circuit in specs.get("circuits", []):
            for gate in circuit.get("inputs", []):
                raw = gate.get("rawInfo", {})
                elements = math.prod(int(d) for d in raw.get("shape", {}).get("dimensions", []))
                total += elements * int(raw.get("integerPrecision", 64)) // 8
    except (AttributeError, TypeError, OverflowError) as error:
        raise ValueError(f"client.specs.json has malformed inputs ({error})") from None
    return total + CIPHERTEXT_OVERHEAD_BYTES
