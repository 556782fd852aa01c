"""ruff and mypy run as part of the suite, so `make test` fails on lint or type errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import background_check

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint() -> None:
    result = _run("ruff", "check", "qwen3_jupyter", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run("ruff", "format", "--check", "qwen3_jupyter", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    """mypy's run started with the suite (see tests/background_check.py), or one now."""
    check = background_check.MYPY
    if check is None:
        check = background_check.start("mypy")
    background_check.MYPY = None
    try:
        code, printed = check.result()
    finally:
        check.stop()
    assert code == 0, printed


def test_every_lazily_imported_name_is_typed_for_users() -> None:
    """The package ships `py.typed`, and names it imports on first access (`generate_batch`,
    `Result`, ...) are imported under TYPE_CHECKING too: without that a user's mypy saw them
    as Any (and, without py.typed, skipped the package)."""
    import ast

    import qwen3_jupyter

    tree = ast.parse((ROOT / "qwen3_jupyter/__init__.py").read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    lazy = set(qwen3_jupyter._LAZY)
    assert typed == lazy, f"untyped: {sorted(lazy - typed)}, not lazy: {sorted(typed - lazy)}"
    assert (ROOT / "qwen3_jupyter/py.typed").is_file()
