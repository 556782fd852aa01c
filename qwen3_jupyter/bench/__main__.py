"""Dispatch `python -m qwen3_jupyter.bench NAME [options]` to `qwen3_jupyter.bench.NAME.main`."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType

import qwen3_jupyter.bench as bench_pkg
from qwen3_jupyter.bench._cli import run_main


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m qwen3_jupyter.bench {{{','.join(names)}}} [options]")
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(names)}", file=sys.stderr)
        return 2
    return run_main(name, lambda args: _load(name).main(args), argv[1:])


def _load(name: str) -> ModuleType:
    """The bench's module, imported inside `run_main`: a Ctrl-C while torch imports is one
    line too."""
    return importlib.import_module(f"qwen3_jupyter.bench.{name}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
