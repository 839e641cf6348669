"""The test run's exit status survives Concrete's runtime, so a failing suite fails make and CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAILING_AFTER_A_CIRCUIT = """
from concrete import fhe


def test_fails_after_running_a_circuit():
    @fhe.compiler({"x": "encrypted"})
    def add_one(x):
        return x + 1

    assert add_one.compile(range(8)).encrypt_run_decrypt(3) == 4
    assert False, "on purpose"
"""


@pytest.mark.fhe
def test_a_failure_after_a_circuit_run_exits_non_zero(tmp_path: Path) -> None:
    test = tmp_path / "test_on_purpose.py"
    test.write_text(FAILING_AFTER_A_CIRCUIT)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         str(test)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "1 failed" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1, result.stdout
