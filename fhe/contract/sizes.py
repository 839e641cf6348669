"""Byte counts as people read them, shared by the CLI, the demo and the benchmark report."""

from __future__ import annotations


def readable_size(size: int, exact: bool = False) -> str:
    """`size` in B, kB or MB (decimal units); with `exact`, the byte count follows in brackets."""
    if size < 1_000:
        return f"{size} B"
    shown = f"{size / 1e3:.2f} kB" if size < 1_000_000 else f"{size / 1e6:.2f} MB"
    return f"{shown} ({size:,} bytes)" if exact else shown
