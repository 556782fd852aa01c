"""Teardown registry that keeps `unload_ipython_extension` the exact mirror of loading.

Anything that starts a thread, registers a hook or a comm target while the extension is
loaded registers its undo here; unloading runs every undo once, newest first, and a failing
undo never prevents the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)
_undos: list[tuple[str, Callable[[], None]]] = []
_told: list[str] = []


def tell(what: str) -> None:
    """Note something an undo turned off that the user had turned on ("autoclean turned off
    (%qwen3_autoclean on)"): unloading says them all in one line. `%reload_ext`, the hint
    IPython gives for a second `%load_ext`, changed them without a word."""
    _told.append(what)


def take_told() -> list[str]:
    """What the undos told since the last call, oldest first."""
    told, _told[:] = list(_told), []
    return told


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


def remove_magics(
    ip: Any, class_name: str, line: tuple[str, ...], cell: tuple[str, ...] = ()
) -> None:
    """Take the magics class `class_name` back out of `ip`: its line and cell magics, its
    registry entry, and its instance from `ip.configurables` (where IPython put it; each
    reload left one more there, all of which `%config` then set)."""
    manager = ip.magics_manager
    for kind, names in (("line", line), ("cell", cell)):
        for name in names:
            manager.magics[kind].pop(name, None)
    instance = manager.registry.pop(class_name, None)
    configurables = getattr(ip, "configurables", None)
    if instance is not None and isinstance(configurables, list):
        configurables[:] = [c for c in configurables if c is not instance]
