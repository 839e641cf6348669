"""The structural check of uploaded keys: exactly one Cap'n Proto message (nothing appended, nothing
missing), junk refused from its segment table alone, payloads measured without being read, and
the library's reasons said without its C++ source locations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import capnp
import pytest

from fhe.contract.keyset import (
    MalformedKeys,
    _schema,
    short_reason,
    uploaded_keyset,
    uploaded_keyset_file,
)

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]


def keys_message(payload_bytes: int) -> bytes:
    """A well-formed server keyset of one key-switch key with a payload of `payload_bytes`."""
    message = _schema().ServerKeyset.new_message()
    key = message.init("lweKeyswitchKeys", 1)[0]
    key.info.params.levelCount = 3
    key.payload.init("data", 1).init(0, payload_bytes)
    return message.to_bytes()


def test_one_whole_message_is_read_and_anything_appended_is_refused(tmp_path: Path) -> None:
    data = keys_message(1000)
    (described,) = uploaded_keyset(data).keys
    assert described.payload_bytes == 1000 and dict(described.params)["levelCount"] == 3
    for extra in (b"\x00", b"x" * 8, os.urandom(1 << 16)):
        with pytest.raises(MalformedKeys, match=f"^{len(extra)} bytes follow the serialized keys"):
            uploaded_keyset(data + extra)
        path = tmp_path / "appended.keys"
        path.write_bytes(data + extra)
        with pytest.raises(MalformedKeys, match="bytes follow the serialized keys"):
            uploaded_keyset_file(path)
    with pytest.raises(MalformedKeys, match=f"announces {len(data)} bytes, {len(data) - 8} were"):
        uploaded_keyset(data[:-8])
    for junk in (b"", b"\x01\x02", os.urandom(4096)):
        with pytest.raises(MalformedKeys):
            uploaded_keyset(junk)


PEAK_GROWTH = """
import sys
from pathlib import Path
from fhe.contract.keyset import MalformedKeys, _schema, uploaded_keyset, uploaded_keyset_file

def peak():
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    return int(status.split()[0]) * 1024

path, whole = Path(sys.argv[1]), sys.argv[2] == "whole"
_schema()  # capnp and the schema loaded before measuring
before = peak()
try:
    described = uploaded_keyset(path.read_bytes()) if whole else uploaded_keyset_file(path)
    outcome = str(described.keys[0].payload_bytes)
except MalformedKeys as error:
    outcome = str(error)
print(peak() - before, outcome)
"""


def peak_growth(path: Path, whole: bool = False) -> tuple[int, str]:
    """How far a fresh process's peak memory grows while it checks the file, and the outcome."""
    answer = subprocess.run(
        [sys.executable, "-c", PEAK_GROWTH, str(path), "whole" if whole else "mapped"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout.split(" ", 1)
    return int(answer[0]), answer[1].strip()


def test_a_large_file_is_judged_without_being_read(tmp_path: Path) -> None:
    """A 64 MiB payload is measured through the mapping without its pages entering memory, and
    64 MiB of junk is refused from its first bytes; reading either whole (the control) would
    take its size."""
    size = 64 << 20
    honest = tmp_path / "honest.keys"
    honest.write_bytes(keys_message(size))
    junk = tmp_path / "junk.keys"
    with junk.open("wb") as handle:
        handle.write(b"\xff\xff\x00\x00")
        handle.truncate(size)
    grown, outcome = peak_growth(honest)
    assert outcome == str(size) and grown < 8 << 20, (grown, outcome)
    grown, outcome = peak_growth(junk)
    assert "segment table of 65536 segments" in outcome and grown < 8 << 20, (grown, outcome)
    grown, outcome = peak_growth(honest, whole=True)
    assert outcome == str(size) and grown > size // 2, "the control did not see the file read whole"


def test_reasons_name_no_library_source_files() -> None:
    try:
        with _schema().ServerKeyset.from_bytes(b"\x00" * 8) as root:
            list(root.lweBootstrapKeys)
    except capnp.KjException as error:
        raw = str(error)
    assert ".c++:" in raw
    assert short_reason(raw) == "Message did not contain a root pointer."
    with pytest.raises(MalformedKeys) as refused:
        uploaded_keyset(b"\x00" * 8)
    assert ".c++" not in str(refused.value) and "stack" not in str(refused.value)
    assert "root pointer" in str(refused.value)
