"""After Concrete has run a circuit, a broken pipe raises instead of crashing the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import socket
import numpy as np
from concrete import fhe
from fhe.contract.signals import ignore_sigpipe

@fhe.compiler({"x": "encrypted"})
def add_one(x):
    return x + 1

circuit = add_one.compile([np.int64(i) for i in range(4)])
circuit.keygen()
circuit.run(circuit.encrypt(1))
if FIX:
    ignore_sigpipe()
ours, theirs = socket.socketpair()
theirs.close()
try:
    ours.sendall(b"x" * 200000)
except BrokenPipeError:
    print("broken pipe raised")
"""


def run(fix: bool) -> subprocess.CompletedProcess:
    code = f"FIX = {fix}\n{SCRIPT}"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.fhe
def test_ignore_sigpipe_keeps_broken_pipes_harmless() -> None:
    fixed = run(True)
    assert fixed.returncode == 0 and "broken pipe raised" in fixed.stdout, fixed.stderr[-2000:]


@pytest.mark.fhe
def test_without_it_concrete_turns_a_broken_pipe_into_a_crash() -> None:
    """The reason for the fix: if this starts passing cleanly, Concrete no longer needs it."""
    crashed = run(False)
    assert crashed.returncode != 0 and "broken pipe raised" not in crashed.stdout
