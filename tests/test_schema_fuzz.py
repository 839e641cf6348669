"""schemathesis against a running server's OpenAPI schema: every route, no 5xx, no crash, and
every answer as the schema declares it (status, media type, body).

The README's command is the same; here the server holds the tiny FHE bundle and a clear model,
so generated requests reach both kinds of route. The routes read their bodies raw, so the schema
declares none and schemathesis sends none: hostile bodies (deep nesting, huge integers, bad
UTF-8, lone surrogates, non-finite numbers) go to every POST operation explicitly as well.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from server import compute, errors, run_errors
from server.app import create_app
from server.compute import circuits, clear_workers, compiled_circuit, fair_share
from server.routes.answers import ERROR_WORDS
from server.settings import ServerSettings
from tests.support.server_process import ServerProcess
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


# The statuses of the routes whose answer comes from a worker, checked against the mappings.

SERVER = Path(__file__).resolve().parents[1] / "server"
RUNS = {
    "POST /v1/models/{name}/predict": {"fhe": "run_circuit", "clear": None},
    "POST /v1/keys": {"keys": "check_keys"},
    "POST /v1/models/{name}/jobs": {"clear": None},
    "POST /": {"clear": None},
    "POST /models/{name}": {"clear": None},
}
"""Each route whose answer can come from a worker: the mappings of server/run_errors.py its
outcomes go through (a job's run goes to its record, not to the submitting route's answer: a
submission only has a clear body checked), with the Celery task that answers for FHE ones."""
UNREACHABLE = {"POST /v1/keys": {404}}
"""Mapped statuses a route cannot give: a key check's KeyMissing (404) never reaches its mapping
(the Celery executor turns a key it published and lost into BrokerLost, 503; the local pool
reads the upload's own file)."""


def _worker_codes(task: str) -> set[str]:
    """The codes the Celery task `task` answers with that reach `errors.from_code`: those of its
    `_error(errors.X, ...)` answers but the ones the API's `_task` turns into a local outcome."""
    worker = ast.parse((SERVER / "compute" / "celery_worker.py").read_text())
    body = next(n for n in ast.walk(worker) if isinstance(n, ast.FunctionDef) and n.name == task)
    answered = {
        call.args[0].attr
        for call in ast.walk(body)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "_error"
        and isinstance(call.args[0], ast.Attribute)
    }
    api = ast.parse((SERVER / "compute" / "celery_api.py").read_text())
    sender = next(
        n for n in ast.walk(api) if isinstance(n, ast.AsyncFunctionDef) and n.name == "_task"
    )
    mapped = {
        node.value.attr
        for compare in ast.walk(sender)
        if isinstance(compare, ast.Compare)
        for node in ast.walk(compare)
        if isinstance(node, ast.Attribute)
        and node.attr == "code"
        and isinstance(node.value, ast.Attribute)
    }
    assert answered and mapped, (answered, mapped)
    return {getattr(errors, name).code for name in answered - mapped}


def _backend_outcomes() -> list[BaseException]:
    """One of each exception the compute backends raise (but RunRefused, given per code)."""
    outcomes: list[BaseException] = []
    for module in (compute, circuits, clear_workers, compiled_circuit, fair_share):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Exception)
                and value.__module__ == module.__name__
                and value is not compute.RunRefused
            ):
                outcomes.append(value("an outcome"))
    return outcomes


def _mapped_statuses(kind: str, task: str | None) -> set[int]:
    """The statuses of the domain errors a mapping of server/run_errors.py raises for each
    outcome of a backend, and (FHE) for each code `task` answers and an unknown one."""
    mapping = {
        "fhe": lambda: run_errors.fhe_run_errors("m"),
        "keys": run_errors.key_check_errors,
        "clear": run_errors.clear_run_errors,
    }[kind]
    outcomes = _backend_outcomes()
    if task is not None:
        codes = [*_worker_codes(task), "a code of another version"]
        outcomes += [compute.RunRefused(code, "refused") for code in codes]
    statuses = set()
    for outcome in outcomes:
        try:
            with mapping():
                raise outcome
        except errors.ServiceError as error:
            statuses.add(error.status)
        except Exception as error:  # not an outcome of this backend: it passes through
            assert error is outcome
    return statuses


@pytest.mark.fast
def test_routes_declare_what_their_workers_can_answer() -> None:
    """Every domain error's status can be declared; each route whose answer can come from a
    worker declares every status its mappings give (a worker's unknown code 502, a Celery
    timeout 504 ...), and only those routes declare 502 and 504, which nothing else raises."""
    classes = errors._all_classes(errors.ServiceError)
    assert {cls.status for cls in classes} <= set(ERROR_WORDS)
    schema = create_app(ServerSettings(dev_mode=True)).openapi()
    declared = {
        f"{method.upper()} {path}": {int(status) for status in operation["responses"]}
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert set(RUNS) <= set(declared)
    worker_only = {errors.WorkerError.status, errors.FHETimeout.status}
    givers: dict[int, set[str]] = {status: set() for status in worker_only}
    for route, mappings in RUNS.items():
        given = set().union(*(_mapped_statuses(k, task) for k, task in mappings.items()))
        given -= UNREACHABLE.get(route, set())
        assert given <= declared[route], f"{route} undeclared: {sorted(given - declared[route])}"
        for status in worker_only & given:
            givers[status].add(route)
    assert givers[502] == givers[504] == {"POST /v1/models/{name}/predict", "POST /v1/keys"}
    for status, routes in givers.items():
        claiming = {route for route, statuses in declared.items() if status in statuses}
        assert claiming == routes, f"{status} declared by {sorted(claiming - routes)}"
    raisers = {
        path.relative_to(SERVER).as_posix()
        for path in SERVER.rglob("*.py")
        if re.search(r"\b(FHETimeout|WorkerError)\(", path.read_text())
    }
    assert raisers == {"errors.py", "run_errors.py"}, raisers
