"""The tests drive real kernels with the same driver the benchmarks use, plus small helpers
for the weakref-based memory tests."""

from __future__ import annotations

from qwen3_jupyter.bench._kernel import Execution, Kernel
from qwen3_jupyter.interrupts import RUN_STOPPED

NOTHING_FROZEN_BUT_PYTHONS_OWN = (
    "__import__('gc').get_freeze_count()"
    " <= __import__('qwen3_jupyter.incremental_gc').incremental_gc.frozen_by_python_itself()"
)
"""Python 3.12 keeps its immortal objects in the permanent generation (375 at startup, and
every full collection puts them back there): a count of 0 is not what it reads after a thaw."""

__all__ = [
    "NOTHING_FROZEN_BUT_PYTHONS_OWN",
    "WEAKREF_HELPERS",
    "Execution",
    "Kernel",
    "alive",
    "ended_as_interrupted",
    "ok",
]

WEAKREF_HELPERS = """
import gc, sys, weakref
import torch
MiB = 1024 * 1024
refs = {}
def alive(name):
    return refs[name]() is not None
"""
"""Kernel-side code: `refs[name] = weakref.ref(obj)` records a holder, `alive(name)` checks it."""


def ok(kernel: Kernel, code: str) -> Execution:
    """Run `code` and fail the test with the kernel's error if the cell failed."""
    execution = kernel.run(code)
    assert execution.status == "ok", (code, execution.error, execution.stderr)
    return execution


def ended_as_interrupted(execution: Execution) -> bool:
    """Whether the cell a call was interrupted in ended as an interrupted cell does: its reply
    says "error" (the kernel drops the cells queued after it), a KeyboardInterrupt saying so,
    and no traceback shown (the call said what it kept)."""
    reply = execution.reply
    return (
        execution.status == "error"
        and (reply.get("ename"), reply.get("evalue")) == ("KeyboardInterrupt", RUN_STOPPED)
        and not execution.of_type("error")
    )


def alive(kernel: Kernel, name: str) -> bool:
    """Whether the object recorded as `refs[name]` in the kernel is still alive."""
    return bool(kernel.value(f"alive({name!r})"))
