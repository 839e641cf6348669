"""The import contract of DESIGN.md, checked by import-linter (pyproject.toml): the contract
imports nothing of embedding or build, the server only the contract, the client never build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_the_import_contract() -> None:
    run = _lint(REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 kept, 0 broken" in run.stdout


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("fhe", "client", "server"):
        shutil.copytree(REPO / package, root / package, ignore=ignore)
    shutil.copyfile(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _broken_by(tmp_path: Path, file: str, line: str) -> str:
    """import-linter's output over a copy of the packages with `line` appended to `file`, after
    checking that it failed and named that file's module."""
    root = _copy(tmp_path / file.replace("/", "-"))
    target = root / file
    target.write_text(target.read_text() + line)
    run = _lint(root)
    assert run.returncode != 0, f"{file}: {run.stdout}"
    assert file.removesuffix(".py").replace("/", ".") in run.stdout, run.stdout
    return run.stdout


def test_a_forbidden_import_breaks_it(tmp_path: Path) -> None:
    """Each rule fails when broken: the contract importing build, the server importing the
    embedder, the client importing a recipe, the contract importing torch."""
    breaks = {
        "fhe/contract/digest.py": "from fhe.build import recipe  # noqa\n",
        "server/settings.py": "from fhe.embedding import torch_embedder  # noqa\n",
        "client/quantizer.py": "import fhe.build.tabular_recipe  # noqa\n",
        "fhe/contract/sizes.py": "import torch  # noqa\n",
    }
    for file, line in breaks.items():
        stdout = _broken_by(tmp_path, file, line)
        assert "BROKEN" in stdout and "0 broken" not in stdout, stdout


def test_an_import_circle_in_the_server_breaks_it(tmp_path: Path) -> None:
    """The acyclic contract fails on a circle: the domain errors importing the settings, which
    import (through the models) the errors."""
    root = _copy(tmp_path)
    target = root / "server" / "errors.py"
    target.write_text(target.read_text() + "from server import settings  # noqa\n")
    run = _lint(root)
    assert run.returncode != 0, run.stdout
    assert "No import circle in the server" in run.stdout and "BROKEN" in run.stdout, run.stdout
    assert "No cycles are allowed in server." in run.stdout, run.stdout


def test_a_storage_backend_named_outside_storage_breaks_it(tmp_path: Path) -> None:
    """The storage seam fails when code above server.storage names a backend: a route importing
    the Postgres job store, or a worker importing the Postgres key reader (even inside a
    function, as the workers once did) instead of asking `server.storage.stores.key_reader`."""
    breaks = {
        "server/routes/jobs.py": "from server.storage import postgres_jobs  # noqa\n",
        "server/compute/circuits.py": (
            "def _reader():\n    from server.storage.postgres_keys import PostgresKeyReader\n"
            "    return PostgresKeyReader\n"
        ),
    }
    for file, line in breaks.items():
        stdout = _broken_by(tmp_path, file, line)
        assert "Nothing outside server.storage names a storage backend" in stdout, stdout
        assert "5 kept, 1 broken" in stdout, stdout


def _concrete_imports(path: Path) -> list[str]:
    """The `concrete...` modules a source file imports, wherever in the file."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("concrete")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("concrete"):
            found.append(node.module or "")
    return found


def test_the_server_imports_only_concrete_compiler() -> None:
    """import-linter sees external packages at their top level (`concrete`), so the two server
    modules that run circuits are let through it; this holds them to `concrete.compiler` (no
    `concrete.fhe`, no `concrete.ml`), and it fails on a file that breaks the rule."""
    imports = {
        str(path.relative_to(REPO)): _concrete_imports(path)
        for path in sorted((REPO / "server").rglob("*.py"))
    }
    used = {file: names for file, names in imports.items() if names}
    assert set(used) == {"server/compute/compiled_circuit.py", "server/compute/circuits.py"}
    assert all(name == "concrete.compiler" for names in used.values() for name in names), used
    assert _concrete_imports_text("from concrete.ml.deployment import FHEModelServer\n") == [
        "concrete.ml.deployment"
    ]


def _concrete_imports_text(source: str) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "module.py"
        path.write_text(source)
        return _concrete_imports(path)
