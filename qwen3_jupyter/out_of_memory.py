"""What counts as running out of memory, on a GPU and on the host alike.

Why: torch's caching allocator raises `torch.OutOfMemoryError`, but the same failure reaches
Python as a plain RuntimeError elsewhere: torch's CPU allocator ("DefaultCPUAllocator: can't
allocate memory: you tried to allocate N bytes"), a CUDA allocation outside the caching allocator
("CUDA error: out of memory") and cuBLAS creating its handle or workspace on a full GPU
("CUBLAS_STATUS_ALLOC_FAILED"), Triton launching a kernel ("Triton Error [CUDA]: out of memory").
And it arrives wrapped: torch.compile reports a backend's failure as `BackendCompilerFailed`,
and ending a CUDA graph capture that ran out raises its own error on top of the allocator's.
Without this module those end in a traceback, or switch compiling or capturing off for the
kernel, where the caching allocator's error gets a one-line message and a smaller batch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Literal

from .memory import format_bytes

_HOST_ALLOCATION = re.compile(
    r"DefaultCPUAllocator: can't allocate memory(?:: you tried to allocate (\d+) bytes)?"
)
_DEVICE_ALLOCATION = {
    "CUDA error: out of memory": "CUDA error: out of memory, outside torch's allocator",
    "CUBLAS_STATUS_ALLOC_FAILED": "cuBLAS could not allocate its workspace",
    "Triton Error [CUDA]: out of memory": "CUDA out of memory launching a Triton kernel",
}
_CHAIN_LIMIT = 8


def out_of_memory_reason(exc: BaseException) -> str | None:
    """One line saying what ran out if `exc` is an allocation failure, or was raised because of
    one (its wrapped, cause or context exception), else None."""
    return next(filter(None, map(_own_reason, _chain(exc))), None)


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """`exc`, then what it wraps (torch.compile's `inner_exception`), its cause and context."""
    seen: set[int] = set()
    waiting: list[BaseException | None] = [exc]
    while waiting and len(seen) < _CHAIN_LIMIT:
        link = waiting.pop(0)
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        waiting += [getattr(link, "inner_exception", None), link.__cause__, link.__context__]


def _own_reason(exc: BaseException) -> str | None:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return (str(exc).strip().splitlines() or ["out of memory"])[0][:200]
    if not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    host = _HOST_ALLOCATION.search(text)
    if host is not None:
        wanted = f" {format_bytes(int(host.group(1)))}" if host.group(1) else ""
        return f"host memory: could not allocate{wanted} more"
    return next((why for marker, why in _DEVICE_ALLOCATION.items() if marker in text), None)


def allocation_failures_as_oom() -> contextlib.AbstractContextManager[None]:
    """Re-raise every allocation failure as `torch.OutOfMemoryError`, so the one out-of-memory
    path (a one-line message for a call, a smaller batch for a batch) serves them all. Every
    other exception passes through untouched."""
    return _AllocationFailuresAsOOM()


class _AllocationFailuresAsOOM:
    """`allocation_failures_as_oom`, as a class: raised from a generator context manager, the
    new error made a reference cycle on Python 3.12 and later (contextlib's frame holds the
    failure, whose traceback reaches it back), so the failing frames' tensors outlived the
    call's release until some later collection; on a GPU their blocks stayed reserved."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: object, value: BaseException | None, traceback: object
    ) -> Literal[False]:
        import torch

        if not isinstance(value, RuntimeError) or isinstance(value, torch.OutOfMemoryError):
            return False
        reason = out_of_memory_reason(value)
        if reason is None:
            return False
        raise torch.OutOfMemoryError(reason) from None
