"""Which errors are running out of memory: the real CPU allocator's, and the texts CUDA and cuBLAS
raise outside torch's caching allocator (copied from their error messages; no GPU here)."""

from __future__ import annotations

import pytest
import torch

from qwen3_jupyter.out_of_memory import allocation_failures_as_oom, out_of_memory_reason
from tests.oversized import BEYOND_ANY_HOST


def test_the_cpu_allocators_runtime_error_is_out_of_memory() -> None:
    with pytest.raises(RuntimeError) as info:
        torch.empty(BEYOND_ANY_HOST, dtype=torch.uint8)
    assert not isinstance(info.value, torch.OutOfMemoryError)  # why this module exists
    assert out_of_memory_reason(info.value) == "host memory: could not allocate 262144.0 TiB more"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore"),
            "CUDA out of memory. Tried to allocate 2.00 GiB.",
        ),
        (
            RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported later"),
            "CUDA error: out of memory, outside torch's allocator",
        ),
        (
            RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"),
            "cuBLAS could not allocate its workspace",
        ),
        (RuntimeError("Expected all tensors to be on the same device"), None),
        (ValueError("can't allocate memory"), None),
    ],
)
def test_reasons(error: BaseException, reason: str | None) -> None:
    assert out_of_memory_reason(error) == reason


def test_allocation_failures_become_out_of_memory_errors_and_others_pass() -> None:
    running_out = pytest.raises(torch.OutOfMemoryError, match="host memory: could not allocate")
    with running_out, allocation_failures_as_oom():
        torch.empty(BEYOND_ANY_HOST, dtype=torch.uint8)
    other = pytest.raises(RuntimeError, match="same device")
    with other as info, allocation_failures_as_oom():
        raise RuntimeError("Expected all tensors to be on the same device")
    assert not isinstance(info.value, torch.OutOfMemoryError)
