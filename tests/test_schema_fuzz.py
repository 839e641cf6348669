"""schemathesis against a running server's OpenAPI schema: every route, no 5xx, no crash.

The README's command is the same; here the server holds the tiny FHE bundle and a clear model,
so generated requests reach both kinds of route.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.server_process import ServerProcess

BIN = Path(sys.executable).parent
CONFIG = Path(__file__).resolve().parent / "fuzz" / "schemathesis.toml"


def test_generated_requests_get_no_server_error(mixed_models: Path, tmp_path: Path) -> None:
    server = ServerProcess(mixed_models, tmp_path / "data").start()
    try:
        operations = httpx.get(f"{server.url}/openapi.json").json()["paths"]
        command = [
            str(BIN / "schemathesis"),
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "42",
            "--no-color",
        ]
        run = subprocess.run(
            command, capture_output=True, text=True, timeout=1800, check=False, cwd=tmp_path
        )
        alive = server.alive() and httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert alive, "the server died under generated requests"
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and int(generated.group(1)) >= 500, output[-2000:]
    assert generated.group(1) == generated.group(2), output[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    assert selected, output[-2000:]
    count = sum(len(methods) for methods in operations.values())
    assert int(selected.group(1)) == int(selected.group(2)) == count
