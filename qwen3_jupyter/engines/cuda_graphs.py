"""Capturing the decode step as a CUDA graph, and leaving torch as it was when that fails.

Why a module of its own: every call here depends on state torch keeps per *current* device and
per stream, not per tensor. A graph captured while another device is current records nothing
of the step's work (torch only warns "The CUDA Graph is empty"), and a capture that fails inside
`capture_begin` or `capture_end` leaves the capture stream current for the rest of the kernel,
the allocator perhaps still routing that stream's allocations into the graph's pool, and the
pool's use count raised by one that no graph will give back. The fast engine calls these and
keeps the policy (what to say, what to switch off).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

WARMUP_RUNS = 2
"""Runs of the step on the side stream before capturing (lazy inits, cuBLAS workspaces)."""


def on_device(device: str) -> contextlib.AbstractContextManager[Any]:
    """Make `device` torch's current CUDA device for the block (nothing on the CPU): streams,
    events, graph capture and the allocator's figures follow the current device, not the
    tensors', so `cuda:1` would otherwise be timed, captured and measured on `cuda:0`."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    import torch

    return torch.cuda.device(torch.device(device))


def record(step: Callable[[], Any], side: Any, pool: Any) -> Any:
    """Warm `step` up on the side stream, then capture one run of it into a new graph that
    allocates from `pool`. Raises what the capture raised, with torch put back as it was
    (`end_failed_capture`)."""
    import torch

    from ..interrupts import interrupt_deferred

    # Held like a decode step's (`_whole_steps_only`): an interrupt in a compiled step's guard
    # check is lost to a recompile, and one between the runs would leave the default stream
    # not waiting for the side stream's work, which the call's state restore then races.
    with interrupt_deferred():
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                step()
        torch.cuda.current_stream().wait_stream(side)
    # The warm-ups made the side stream's cuBLAS workspace in the common pool, where a capture
    # would bake in its address: freed later (a user's mode="reduce-overhead" compile clears
    # every workspace) and reused, a replay would write into another tensor. Cleared here, the
    # capture makes its own in the graph's pool, alive as long as the graph (as torch's own
    # cudagraph trees do).
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    graph = torch.cuda.CUDAGraph()
    previous = torch.cuda.current_stream()
    began = False
    try:
        # thread_local: a cell of the notebook's main thread may use the GPU while a background
        # batch captures its new shape; "global" (the default) would fail that cell's CUDA calls.
        with (
            interrupt_deferred(),
            torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"),
        ):
            began = True
            step()
    except BaseException:
        end_failed_capture(previous, pool, graph, began)
        raise
    return graph


def end_failed_capture(previous: Any, pool: Any, graph: Any, began: bool) -> None:
    """Undo what a capture that failed in `capture_begin` or `capture_end` left behind: the
    capture stream current, the allocator perhaps routing it to `pool`, and the failed graph's
    reference to `pool`, which torch before 2.14 never gives back (its graph releases the pool
    only once a capture ended), so the pool, and every graph's memory in it, would outlive the
    engine. `began`: the capture started (the block ran), so that reference was taken.

    A capture that ended (the stream is back: `graph.__exit__` restores it only after
    `capture_end` succeeded) needs nothing: torch gives its pool back when the graph goes."""
    import torch

    if torch.cuda.current_stream() == previous:
        return
    torch.cuda.set_stream(previous)
    if _graph_reset_releases_failed_captures(torch.__version__):
        graph.reset()  # ends the routing and gives the reference back itself
        return
    if _capture_ended(graph):  # capture_end failed after it (instantiating the graph): the
        return  # graph's reset gives its pool back, and routing has ended
    device = torch.cuda.current_device()
    end_routing = getattr(torch._C, "_cuda_endAllocateToPool", None) or getattr(
        torch._C,
        "_cuda_endAllocateCurrentStreamToPool",
        None,  # its name before torch 2.8
    )
    try:
        # Still routing when capture_begin failed at the driver, or capture_end failed on
        # torch before 2.13; torch 2.13 ends the routing before it raises, and a capture_begin
        # that failed before routing took no reference (this raises, and `began` is false).
        if end_routing is None:
            raise RuntimeError("no way to end the routing in this torch")
        end_routing(device, pool)
    except RuntimeError:
        if not began:
            return
    torch._C._cuda_releasePool(device, pool)


def _capture_ended(graph: Any) -> bool:
    """Whether torch marked the capture ended (`pool()` refuses a graph whose capture did
    not end); such a graph releases its pool reference itself."""
    try:
        graph.pool()
    except RuntimeError:
        return False
    return True


def _graph_reset_releases_failed_captures(version: str) -> bool:
    """torch 2.14 (pytorch#190348) made `CUDAGraph.reset` end the routing and release the pool
    after a failed capture; before it, releasing ours too would release it twice (an assert in
    the graph's destructor, where it ends the process). Not probed: torch shows no use count
    for a `graph_pool_handle` pool. A 2.14 pre-release (2.14.0a0+git…, as NVIDIA's containers
    ship) counts as 2.14: if it predates the change, that leaks a pool, where the other guess
    would end the process."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return found is not None and (int(found[1]), int(found[2])) >= (2, 14)


def pool_bytes(pool: Any, fallback: int) -> int:
    """Bytes of the allocator segments in a graph pool, as the allocator's snapshot names them.
    `fallback` (reserved-memory growth across the captures) also counts the side stream's cuBLAS
    workspace and whatever the capture's own cache emptying gave back: used only where the
    snapshot has no pool ids."""
    try:
        import torch

        wanted = tuple(pool)
        return sum(
            int(segment["total_size"])
            for segment in torch.cuda.memory_snapshot()
            if tuple(segment["segment_pool_id"]) == wanted
        )
    except Exception:
        return fallback


def failure_text(exc: BaseException) -> str:
    """A failed capture's own error first: ending a broken capture raises again on top of it
    (e.g. "operation failed due to a previous error during capture"), hiding the cause."""
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        return f"{first_line(cause)}; then: {first_line(exc)}"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` (160 characters at most)."""
    text = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
