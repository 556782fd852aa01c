"""Fresh test kernels, each started while the test before it ran.

Why: starting a kernel and importing torch, transformers and Qwen3's model code (its first
call's first step) took ~10 s of one core here, for every module's kernel and every test with a
kernel of its own, while the other core mostly idled: well over a third of the suite's time.
The pool keeps one kernel started ahead, which does those imports as it starts
(`Kernel(imports=...)`), so a test that takes it waits only for what is left of that.

Each kernel is handed out once; nothing of an earlier test is in it. A kernel started for
another environment (a test changed `os.environ`) is not handed out: a new one is started.
Tests of the first call's own imports (an interrupt while torch imports, memory an import adds)
take a kernel without them: the `no_preload` marker, or `Kernel(...)` directly.
"""

from __future__ import annotations

import contextlib
import os

from qwen3_jupyter.session import FIRST_CALL_IMPORTS
from tests.kernel import Kernel

PRELOADED = FIRST_CALL_IMPORTS
"""What a kernel's first call imports: done by a spare as it starts."""

PER_TEST = ("PYTEST_CURRENT_TEST",)
"""Variables pytest changes for every test: not a different environment."""


class KernelPool:
    """Hands out started kernels with `PRELOADED` imported, and starts the next one at once."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._spare: Kernel | None = None

    def take(self) -> Kernel:
        """A kernel of the caller's own (theirs to shut down), ready for its first cell."""
        spare, self._spare = self._spare, None
        if spare is None or not _same(spare.env, {**os.environ, **self._env}):
            if spare is not None:
                spare.shutdown()
            spare = self._start()
        try:
            spare.wait_ready()
            _nice(spare, 0)  # its test's own priority, now that it runs one
            self._spare = self._start()
        except BaseException:
            spare.shutdown()
            raise
        return spare

    def settle(self) -> None:
        """Wait until the spare kernel has done its imports (for tests that measure this
        process's children: a spare still importing grows by hundreds of MiB meanwhile)."""
        if self._spare is not None:
            self._spare.wait_ready()

    def close(self) -> None:
        if self._spare is not None:
            self._spare.shutdown()
            self._spare = None

    def _start(self) -> Kernel:
        """A kernel importing at a low CPU priority: the test running meanwhile comes first."""
        kernel = Kernel(self._env, imports=PRELOADED, wait=False)
        _nice(kernel, SPARE_NICENESS)
        return kernel


SPARE_NICENESS = 10


def _nice(kernel: Kernel, niceness: int) -> None:
    """Set the kernel process's CPU priority; lowering it back needs root (CI runs as root),
    and a kernel left at 10 only yields to busier processes."""
    import psutil

    if kernel.pid is None:
        return
    with contextlib.suppress(psutil.Error):
        psutil.Process(kernel.pid).nice(niceness)


def _same(first: dict[str, str], second: dict[str, str]) -> bool:
    def relevant(env: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in env.items() if k not in PER_TEST}

    return relevant(first) == relevant(second)
