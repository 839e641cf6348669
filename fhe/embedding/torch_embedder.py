"""Client-side text embedding with any Hugging Face transformer (mean pooling over the mask),
in torch: the reference the ONNX export is checked against, and what builds use."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from fhe.contract.digest import file_sha256
from fhe.embedding.weights import (
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingModelMismatch,
    embedder_identity,
    resolve_model_dir,
    weights_sha256,
)

__all__ = ["DEFAULT_EMBEDDING_MODEL", "EmbeddingModelMismatch", "TextEmbedder", "shared_embedder"]


def apply_delta(model: object, delta: Path) -> None:
    """Replace the base model's tensors named in a fine-tuning delta (a safetensors file)."""
    from safetensors.torch import load_file

    tensors = load_file(str(delta))
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise EmbeddingModelMismatch(
            f"{delta} names tensors the base model lacks: {', '.join(unknown[:5])}"
        )
    wrong = [name for name, value in tensors.items() if value.shape != state[name].shape]
    if wrong:
        raise EmbeddingModelMismatch(f"{delta} has tensors of the wrong shape: {wrong[:5]}")
    model.load_state_dict(
        {name: value.to(state[name].dtype) for name, value in tensors.items()}, strict=False
    )


class TextEmbedder:
    """Turns texts into fixed-size vectors; runs on the client, never on the server."""

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDING_MODEL,
        *,
        max_length: int = 128,
        batch_size: int = 64,
        expected_sha256: str | None = None,
        delta: Path | None = None,
        expected_delta_sha256: str | None = None,
    ) -> None:
        if max_length < 1:
            raise ValueError("max_length must be positive")
        self.model_name = model
        self.model_dir = resolve_model_dir(model)
        self.max_length = max_length
        self.batch_size = batch_size
        self.weights_sha256 = weights_sha256(self.model_dir)
        self._lock = threading.Lock()
        if expected_sha256 is not None and expected_sha256 != self.weights_sha256:
            raise EmbeddingModelMismatch(
                f"embedding weights in {self.model_dir} have sha256 {self.weights_sha256}, "
                f"but the model bundle was trained with {expected_sha256}"
            )
        self.delta = delta
        self.delta_sha256 = file_sha256(delta) if delta is not None else None
        if expected_delta_sha256 is not None and expected_delta_sha256 != self.delta_sha256:
            raise EmbeddingModelMismatch(
                f"fine-tuned embedder weights {delta} have sha256 {self.delta_sha256}, "
                f"but the model bundle was trained with {expected_delta_sha256}"
            )

    @property
    def identity(self) -> str:
        """One string naming the exact weights and settings, for caches of embeddings."""
        return embedder_identity(self.weights_sha256, self.delta_sha256, self.max_length)

    @cached_property
    def _tokenizer_and_model(self):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModel.from_pretrained(self.model_dir)
        if self.delta is not None:
            apply_delta(model, self.delta)
        model.eval()
        return tokenizer, model

    def load(self) -> TextEmbedder:
        """Load tokenizer and weights now rather than on the first call."""
        with self._lock:
            _ = self._tokenizer_and_model
        return self

    def embed(
        self,
        texts: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed `texts` in batches; `progress(n)` is called after each batch of n texts.

        Calls are serialized: a fast tokenizer refuses to be used by two threads at once.
        """
        with self._lock:
            return self._embed(texts, progress)

    def _embed(
        self,
        texts: Sequence[str],
        progress: Callable[[int], None] | None,
    ) -> np.ndarray:
        import torch

        tokenizer, model = self._tokenizer_and_model
        chunks: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [str(text) for text in texts[start : start + self.batch_size]]
            encoded = tokenizer(
                batch,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(pooled.float().numpy())
            if progress is not None:
                progress(len(batch))
        if not chunks:
            return np.zeros((0, model.config.hidden_size), dtype=np.float32)
        return np.concatenate(chunks, axis=0)


@lru_cache(maxsize=4)
def shared_embedder(
    model: str,
    max_length: int,
    expected_sha256: str | None,
    delta: Path | None = None,
    expected_delta_sha256: str | None = None,
) -> TextEmbedder:
    """One loaded embedder per (model, max length, weights) for the whole process.

    Many clients in one process (the demo's browser sessions) share its weights instead of each
    loading their own copy.
    """
    return TextEmbedder(
        model,
        max_length=max_length,
        expected_sha256=expected_sha256,
        delta=delta,
        expected_delta_sha256=expected_delta_sha256,
    )
