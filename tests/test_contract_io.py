"""fhe/contract's shared pieces: the bounded zip reader, the atomic writer and the outputs rules
(real files on disk, real zips, the shipped client.zip)."""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fhe.contract import outputs
from fhe.contract.atomic import atomic_path, open_atomic, write_atomic
from fhe.contract.bare_bundle import describe_bare_bundle
from fhe.contract.concrete_zip import UnreadableZip, read_client_zip, read_members
from fhe.contract.keyset import client_spec_keyset, max_ciphertext_bytes

pytestmark = pytest.mark.fast
REPO = Path(__file__).resolve().parents[1]


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "bounds", "reason"),
    [
        ({"../up": b"x"}, {}, "outside the archive"),
        ({"/etc/passwd": b"x"}, {}, "outside the archive"),
        ({"c:\\windows": b"x"}, {}, "outside the archive"),
        ({f"m{i}": b"" for i in range(5)}, {"max_members": 4}, "5 members, over 4"),
        ({"a": b"0" * 600, "b": b"0" * 600}, {"max_total_bytes": 1000}, "unpacks to 1200"),
        ({"a": b"0" * 2000}, {"max_member_bytes": 1000}, "a is over 1000 bytes"),
    ],
)
def test_a_zip_over_a_bound_is_refused_before_it_is_inflated(
    members: dict[str, bytes], bounds: dict[str, int], reason: str
) -> None:
    with pytest.raises(UnreadableZip, match=reason.replace("\\", r"\\")):
        read_members(_zip(members), **bounds)


def test_a_broken_zip_is_unreadable_and_named_members_are_read_alone(tmp_path: Path) -> None:
    with pytest.raises(UnreadableZip, match="unreadable zip"):
        read_members(b"PK\x03\x04 not a zip")
    with pytest.raises(UnreadableZip, match="unreadable zip"):
        read_members(tmp_path / "absent.zip")
    data = _zip({"a": b"1", "big": b"0" * 5000})
    assert read_members(data, ["a", "missing"], max_member_bytes=10) == {"a": b"1"}


def test_the_shipped_client_zip_reads_through_the_one_reader() -> None:
    client_zip = read_client_zip(REPO / "models" / "sentiment-linear" / "client.zip")
    assert client_zip.versions()["concrete-ml"] == "1.9.0"
    assert len(client_zip.specs()["circuits"]) == 1
    processing = client_zip.processing()
    assert outputs.model_type(processing) == (
        "concrete.ml.sklearn.linear_model",
        "LogisticRegression",
    )
    assert outputs.built_in_model_class(processing) == "LogisticRegression"
    with pytest.raises(outputs.UnknownModelType, match="unreadable model type"):
        outputs.model_type({"model_type": {"serialized_value": "00ff"}})


def test_ties_go_to_the_first_label_row_by_row() -> None:
    rows = np.array([[0.3425177917246925, 0.31, 0.34251779172469254], [0.2, 0.3, 0.5]])
    assert outputs.top_classes(rows).tolist() == [0, 2]


def test_column_messages_name_extra_then_missing_columns() -> None:
    assert outputs.column_messages(["a", "colour"], ["a", "b"]) == [
        "The following columns were given but not expected: {'colour'}",
        "The following columns were expected but not given: {'b'}",
    ]
    assert outputs.column_messages(["a"], ["a"]) == []


def test_an_atomic_write_leaves_the_old_file_or_the_new_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError), open_atomic(target) as handle:
        handle.write(b"half")
        raise RuntimeError("cut off")
    assert target.read_bytes() == b"old"
    with open_atomic(target, "w", encoding="utf-8") as handle:
        handle.write("new")
    assert target.read_text() == "new"
    with atomic_path(tmp_path / "copied") as partial:
        partial.write_bytes(b"by name")
    assert (tmp_path / "copied").read_bytes() == b"by name"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["copied", "file"]


def test_an_exclusive_write_keeps_what_another_process_wrote_first(tmp_path: Path) -> None:
    key = tmp_path / "key"
    with open_atomic(key, exclusive=True, permissions=0o600) as handle:
        handle.write(b"first")
    with open_atomic(key, exclusive=True, permissions=0o600) as handle:
        handle.write(b"second")
    assert key.read_bytes() == b"first"
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert [path.name for path in tmp_path.iterdir()] == ["key"]


def test_threads_writing_one_path_at_once_each_write_whole(tmp_path: Path) -> None:
    """Each write goes through a temporary file of its own: threads of one process writing the
    same path together (demo sessions downloading one embedder file) all succeed, and the file
    ends as one writer's whole content, the mode of a plain write, with no partial left."""
    target = tmp_path / "embedder.onnx"
    writers, chunks, chunk = 16, 8, 64 << 10
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(index: int) -> None:
        try:
            start.wait()
            with open_atomic(target, sync=index % 2 == 0) as handle:
                for _ in range(chunks):
                    handle.write(bytes([index]) * chunk)
                    os.sched_yield()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    data = target.read_bytes()
    assert len(data) == chunks * chunk and data == bytes([data[0]]) * len(data)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
    assert [path.name for path in tmp_path.iterdir()] == ["embedder.onnx"]


SPECS = {
    "circuits": [
        {"inputs": [{"typeInfo": {"lweCiphertext": {"abstractShape": {"dimensions": [1, 4]}}}}]}
    ]
}
"""A client.specs.json with one encrypted input of 4 features (the rest of the spec absent)."""


def _bare_bundle(root: Path, processing: object, specs: object = SPECS) -> Path:
    """A bare directory: client.zip with these members, and a server.zip (never compiled)."""
    root.mkdir(parents=True)
    members = {
        "client.specs.json": json.dumps(specs).encode(),
        "serialized_processing.json": json.dumps(processing).encode(),
        "versions.json": b"{}",
    }
    (root / "client.zip").write_bytes(_zip(members))
    (root / "server.zip").write_bytes(_zip({"versions.json": b"{}"}))
    return root


QUANTIZER = {"serialized_value": {"n_bits": 8}}
HOSTILE_PROCESSING = {
    "a list": [QUANTIZER],
    "a number": 7,
    "a string": "input_quantizers",
    "quantizers a number": {"input_quantizers": 3},
    "a quantizer a list": {"input_quantizers": [[8]]},
    "a quantizer a number": {"input_quantizers": [QUANTIZER, 8]},
    "a serialized value a list": {"input_quantizers": [{"serialized_value": [8]}]},
}


@pytest.mark.parametrize("processing", HOSTILE_PROCESSING.values(), ids=list(HOSTILE_PROCESSING))
def test_a_hostile_bare_bundle_is_unloadable(tmp_path: Path, processing: object) -> None:
    """serialized_processing.json (or client.specs.json) of another JSON shape is a ValueError
    saying so, not a crash: the registry lists the directory as unloadable with the reason."""
    from server.models.registry import ModelRegistry

    models = tmp_path / "models"
    with pytest.raises(ValueError, match=r"client\.zip"):
        describe_bare_bundle(_bare_bundle(models / "hostile", processing))
    odd_bits = {"input_quantizers": [{"serialized_value": {"n_bits": [8]}}, QUANTIZER]}
    described = describe_bare_bundle(_bare_bundle(models / "odd-bits", odd_bits))
    assert described.input.shape == [4] and described.circuit.params == {"input_n_bits": [8]}
    listed = {model.name: model for model in ModelRegistry.scan(models).all()}
    assert set(listed) == {"hostile", "odd-bits"}
    assert not listed["hostile"].ready and "client.zip" in (listed["hostile"].reason or "")


@pytest.mark.parametrize(
    ("read", "specs"),
    [
        (client_spec_keyset, []),
        (client_spec_keyset, {"keyset": [7]}),
        (client_spec_keyset, {"keyset": {"lweBootstrapKeys": [7]}}),
        (max_ciphertext_bytes, 7),
        (max_ciphertext_bytes, {"circuits": [7]}),
        (max_ciphertext_bytes, {"circuits": [{"inputs": [{"rawInfo": []}]}]}),
    ],
    ids=lambda value: value.__name__ if callable(value) else json.dumps(value),
)
def test_a_client_spec_of_another_shape_is_a_value_error(read: Any, specs: object) -> None:
    """What the registry reads of any bundle's client.specs.json (its key set, its largest
    ciphertext) refuses JSON of another shape with ValueError, which it lists as unloadable."""
    with pytest.raises(ValueError, match=r"client\.specs\.json"):
        read(specs)
