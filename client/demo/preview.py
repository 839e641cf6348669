"""Short human previews of what crosses each step: numbers, bytes and sizes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fhe.contract.sizes import readable_size


def size_text(size: int) -> str:
    """A byte count in the unit a person reads best (B, kB, MB), with the exact count."""
    return readable_size(size, exact=True)


def hex_preview(data: bytes, shown: int = 64) -> str:
    """The first `shown` bytes as hex in groups of four, and how much is left out."""
    head = data[:shown].hex(" ", 4)
    if len(data) <= shown:
        return head
    return f"{head} … (+{len(data) - shown:,} more bytes)"


def number_preview(
    values: np.ndarray | Sequence[float], shown: int = 8, floats: bool = True
) -> str:
    """The first `shown` values of a vector, and its length."""
    flat = np.asarray(values).ravel()
    if floats:
        items = ", ".join(f"{value:+.4f}" for value in flat[:shown])
    else:
        items = ", ".join(str(int(value)) for value in flat[:shown])
    more = f", … ({flat.size} values)" if flat.size > shown else ""
    return f"[{items}{more}]"
