"""The text embedder: packaged weights checked by sha256, mean pooling equal to the reference,
and the client's ONNX export equal to torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fhe.embedding.torch_embedder import TextEmbedder
from fhe.embedding.weights import (
    DEFAULT_EMBEDDING_MODEL,
    PACKAGED_WEIGHTS_SHA256,
    EmbeddingModelMismatch,
    packaged_model_dir,
)

# Not `fast`: the embedder needs torch, transformers and the packaged weights, the build role,
# which .venv-fast (make test-fast) leaves out.
TEXTS = ["the crew was lovely", "my bag is lost", "a much longer tweet " * 20]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(batch_size=2).load()


def test_default_weights_come_from_the_pinned_package(embedder: TextEmbedder) -> None:
    assert embedder.model_dir == packaged_model_dir(DEFAULT_EMBEDDING_MODEL)
    assert embedder.weights_sha256 == PACKAGED_WEIGHTS_SHA256[DEFAULT_EMBEDDING_MODEL]


def test_mean_pooling_matches_sentence_transformers(embedder: TextEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedder.model_dir), device="cpu")
    reference.max_seq_length = embedder.max_length
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    ours = embedder.embed(TEXTS)
    ours = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_batches_and_progress(embedder: TextEmbedder) -> None:
    seen: list[int] = []
    vectors = embedder.embed(TEXTS, progress=seen.append)
    assert seen == [2, 1]
    np.testing.assert_allclose(vectors[2], embedder.embed(TEXTS[2:])[0], atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_local_path_and_hash_mismatch(embedder: TextEmbedder) -> None:
    local = TextEmbedder(str(embedder.model_dir))
    assert local.weights_sha256 == embedder.weights_sha256
    with pytest.raises(EmbeddingModelMismatch, match="trained with"):
        TextEmbedder(str(embedder.model_dir), expected_sha256="0" * 64)


def test_onnx_export_of_a_fine_tuned_embedder_equals_torch_and_is_cached(
    tmp_path: Path,
) -> None:
    """The client's fast path: base plus the shipped delta, exported once, equal to torch, and
    loaded once per process whether found by its weights or by the card's hashes."""
    from fhe.embedding.onnx_embedder import exported_embedder
    from fhe.embedding.onnx_export import cache_key, cached_onnx_embedder

    delta = REPO / "models" / "sentiment" / "embedder-delta.safetensors"
    tuned = TextEmbedder(delta=delta)
    fast = cached_onnx_embedder(tuned, tmp_path)
    assert fast is not None
    export = tmp_path / f"{cache_key(tuned)}.onnx"
    written = export.stat().st_mtime_ns
    texts = [*TEXTS, "@united thanks!! ✈️", ""]
    reference = tuned.embed(texts)
    np.testing.assert_allclose(fast.embed(texts), reference, atol=1e-5)
    np.testing.assert_allclose(tuned.embed(texts), reference, atol=0)  # still in eval mode
    again = cached_onnx_embedder(TextEmbedder(delta=delta), tmp_path)
    assert again is not None and export.stat().st_mtime_ns == written
    assert cache_key(TextEmbedder()) != cache_key(tuned)
    assert cache_key(TextEmbedder(delta=delta, max_length=64)) != cache_key(tuned)
    assert again is fast  # one ONNX Runtime session of these weights per process
    by_hashes = exported_embedder(tmp_path, tuned.identity, tuned.max_length)
    assert by_hashes is fast
    np.testing.assert_allclose(by_hashes.embed(texts), reference, atol=1e-5)
    assert exported_embedder(tmp_path, TextEmbedder().identity, tuned.max_length) is None


def test_sessions_asking_at_once_share_one_export(tmp_path: Path) -> None:
    """torch.onnx.export is not thread-safe; the demo's sessions may all ask at once."""
    import threading

    from fhe.embedding.onnx_embedder import OnnxEmbedder
    from fhe.embedding.onnx_export import shared_onnx_embedder

    tuned = TextEmbedder(delta=REPO / "models" / "sentiment" / "embedder-delta.safetensors")
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(shared_onnx_embedder(tuned, tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 3 and all(isinstance(fast, OnnxEmbedder) for fast in got)
    assert len({id(fast) for fast in got}) == 1
