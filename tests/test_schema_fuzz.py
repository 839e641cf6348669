"""schemathesis against a running server's OpenAPI schema: every route, no 5xx, no crash, and
every answer as the schema declares it (status, media type, body).

The README's command is the same; here the server holds the tiny FHE bundle and a clear model,
so generated requests reach both kinds of route. The routes read their bodies raw, so the schema
declares none and schemathesis sends none: hostile bodies (deep nesting, huge integers, bad
UTF-8, lone surrogates, non-finite numbers) go to every POST operation explicitly as well.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.settings import ServerSettings
from tests.server_process import ServerProcess
from tests.test_hostile_json import HOSTILE_BODIES, iris_body

BIN = Path(sys.executable).parent
CONFIG = Path(__file__).resolve().parent / "fuzz" / "schemathesis.toml"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
"""No 5xx, and each answer's status, media type and body as /openapi.json declares them."""
EXTRA_BODIES = {
    **HOSTILE_BODIES,
    **{f"number {literal}": iris_body(literal) for literal in ("1e999", "NaN", "-Infinity")},
    "empty": b"",
    "truncated": b'{"inputs": {"data": [',
}


def hostile_requests(url: str, paths: dict[str, dict]) -> list[str]:
    """POST each extra body to every POST operation and fuzzed model; the 5xx (or unanswered)."""
    models = tomllib.loads(CONFIG.read_text())["dictionaries"]["models"]["values"]
    targets = sorted(
        {
            path.replace("{name}", model)
            for path, methods in paths.items()
            if "post" in methods
            for model in models
        }
    )
    failures = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for target in targets:
            for name, body in EXTRA_BODIES.items():
                try:
                    status = client.post(
                        target, content=body, headers={"Content-Type": "application/json"}
                    ).status_code
                except httpx.TransportError as error:
                    failures.append(f"POST {target} ({name}): {error!r}")
                    continue
                if status >= 500:
                    failures.append(f"POST {target} ({name}): {status}")
    return failures


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
            ",".join(CHECKS),
            "--max-examples",
            "40",
            "--seed",
            "42",
            "--no-color",
        ]
        run = subprocess.run(
            command, capture_output=True, text=True, timeout=1800, check=False, cwd=tmp_path
        )
        failures = hostile_requests(server.url, operations)
        alive = server.alive() and httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()
    assert not failures, "\n".join(failures)
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


@pytest.mark.fast
def test_every_route_declares_its_answers() -> None:
    """/openapi.json gives every operation a success answer and its error answers, each with a
    schema for every media type (a 204 has no body): what schemathesis checks answers against."""
    schema = create_app(ServerSettings(dev_mode=True)).openapi()
    error_ref = "#/components/schemas/ErrorBody"
    assert "ErrorBody" in schema["components"]["schemas"]
    missing = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            answers = operation["responses"]
            if not any(status.startswith("2") for status in answers):
                missing.append(f"{where}: no success answer")
            if "401" not in answers or "422" not in answers:
                missing.append(f"{where}: the token check's and validation's errors undeclared")
            for status, answer in answers.items():
                content = answer.get("content", {})
                if status == "204":
                    continue
                if not content:
                    missing.append(f"{where} {status}: no body described")
                for media_type, described in content.items():
                    if "schema" not in described:
                        missing.append(f"{where} {status} {media_type}: no schema")
                if status.startswith("5") or status in ("401", "422"):
                    ref = content.get("application/json", {}).get("schema", {}).get("$ref")
                    if ref != error_ref:
                        missing.append(f"{where} {status}: not the error body")
    assert not missing, "\n".join(missing)
