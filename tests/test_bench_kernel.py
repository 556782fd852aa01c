"""The kernel driver the benchmarks and tests share: a kernel that dies mid-cell is reported at
once, so a crash in native code (a CUDA fault, say) cannot stall a bench until its timeout."""

from __future__ import annotations

import time

import pytest

from qwen3_jupyter.bench._kernel import Kernel, KernelDied


def test_a_kernel_that_dies_mid_cell_is_reported_at_once(kernel_env: dict[str, str]) -> None:
    kernel = Kernel(kernel_env)
    try:
        assert kernel.value("1 + 1") == 2
        started = time.monotonic()
        with pytest.raises(KernelDied, match="the kernel died while running 'import os"):
            kernel.run("import os, time\ntime.sleep(0.5)\nos._exit(3)", timeout=120)
        assert time.monotonic() - started < 30, "waited for the cell's timeout"
    finally:
        kernel.shutdown()
