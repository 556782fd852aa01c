"""The tests drive real kernels with the same driver the benchmarks use, plus small helpers
for the weakref-based memory tests."""

from __future__ import annotations

from qwen3_jupyter.bench._kernel import Execution, Kernel

__all__ = ["WEAKREF_HELPERS", "Execution", "Kernel", "alive", "ok"]

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


def alive(kernel: Kernel, name: str) -> bool:
    """Whether the object recorded as `refs[name]` in the kernel is still alive."""
    return bool(kernel.value(f"alive({name!r})"))
