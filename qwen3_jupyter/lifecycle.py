"""Teardown registry that keeps `unload_ipython_extension` the exact mirror of loading.

Anything that starts a thread, registers a hook or a comm target while the extension is
loaded registers its undo here; unloading runs every undo once, newest first, and a failing
undo never prevents the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

_log = logging.getLogger(__name__)
_undos: list[tuple[str, Callable[[], None]]] = []


def on_unload(name: str, undo: Callable[[], None]) -> None:
    """Register `undo` to run when the extension is unloaded (replacing one of the same name)."""
    _undos[:] = [(n, u) for n, u in _undos if n != name]
    _undos.append((name, undo))


def run_unload() -> list[str]:
    """Run every registered undo, newest first; return the names of those that failed."""
    failed = []
    while _undos:
        name, undo = _undos.pop()
        try:
            undo()
        except Exception:
            _log.exception("qwen3_jupyter: undo %s failed", name)
            failed.append(name)
    return failed
