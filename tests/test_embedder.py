"""The text embedder: packaged weights checked by sha256, mean pooling equal to the reference."""

from __future__ import annotations

import numpy as np
import pytest

from fhe.embedder import (
    DEFAULT_EMBEDDING_MODEL,
    PACKAGED_WEIGHTS_SHA256,
    EmbeddingModelMismatch,
    TextEmbedder,
    packaged_model_dir,
)

TEXTS = ["the crew was lovely", "my bag is lost", "a much longer tweet " * 20]


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
