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
        (
            RuntimeError("Triton Error [CUDA]: out of memory"),  # Triton's driver.c wording
            "CUDA out of memory launching a Triton kernel",
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


def test_the_failing_frames_die_with_the_error_no_collection_needed() -> None:
    """On Python 3.12 and later, the error raised in place of the allocator's made a reference
    cycle (contextlib's generator frame held the failure): the failing frame's tensor lived on
    after the call caught the error, until some later collection."""
    import gc
    import weakref

    refs: list[weakref.ref[torch.Tensor]] = []

    def run_out() -> None:
        held = torch.ones(1024)  # as a forward's activations are
        refs.append(weakref.ref(held))
        torch.empty(BEYOND_ANY_HOST, dtype=torch.uint8)

    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            with allocation_failures_as_oom():
                run_out()
        except torch.OutOfMemoryError:
            pass
        assert refs[0]() is None, "kept alive by a cycle until a collection"
    finally:
        if enabled:
            gc.enable()


def _host_allocation_failure() -> RuntimeError:
    try:
        torch.empty(BEYOND_ANY_HOST, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("the allocation succeeded")


def test_a_failure_wrapped_around_running_out_is_running_out() -> None:
    """torch.compile wraps a backend's error in BackendCompilerFailed; ending a CUDA graph
    capture that ran out raises its own error with the allocator's as context. Both are running
    out of memory (a smaller batch, a one-line message), not a failed compile or capture that
    would switch compiling or capturing off for the kernel."""
    from torch._dynamo.exc import BackendCompilerFailed

    try:
        wrapped = BackendCompilerFailed(lambda: None, _host_allocation_failure(), None)
    except TypeError:  # torch 2.6 takes no traceback
        wrapped = BackendCompilerFailed(lambda: None, _host_allocation_failure())  # type: ignore[call-arg]
    assert out_of_memory_reason(wrapped) == "host memory: could not allocate 262144.0 TiB more"
    with pytest.raises(torch.OutOfMemoryError, match="host memory"), allocation_failures_as_oom():
        raise wrapped

    def end_capture() -> None:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB.")
        except torch.OutOfMemoryError:
            ended = "CUDA error: operation failed due to a previous error during capture"
            raise RuntimeError(ended)  # noqa: B904 - torch raises it so, the OOM as context

    with pytest.raises(RuntimeError) as info:
        end_capture()
    assert out_of_memory_reason(info.value) == "CUDA out of memory. Tried to allocate 20.00 MiB."

    unrelated = RuntimeError("Expected all tensors to be on the same device")
    unrelated.__context__ = ValueError("can't allocate memory")
    assert out_of_memory_reason(unrelated) is None
