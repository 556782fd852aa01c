"""What a cleanup freed beyond a test's own holder, in the allocator's own terms.

The device round-trip tests in test_cleanup.py assert that the allocator's live bytes return
exactly to their baseline. When they do not, the figures alone say *how much* but not *what*.
This module turns allocator states taken in the kernel at the baseline, while the holder is
held, and after the cleanup into a message naming the blocks that went away (or appeared)
beyond the test's own, with the stack that allocated each one and the stack that freed it.

Two halves:
- `kernel_setup(device)`: code run in the test kernel before anything else. It switches on CUDA
  allocation history (stacks for every live block, a trace of alloc/free events) where torch
  has the API, and defines `_qj_state()`, which prints one allocator state as JSON:
  on CUDA torch's allocated bytes, `memory_stats()` and a compact `_snapshot()`; on the CPU the
  bytes glibc has mapped for large allocations (`mallinfo2().hblkhd`: in a test kernel every
  tensor over 32 MiB, glibc's largest mmap threshold, is its own mapping, so this counts them
  exactly without walking the gc heap, which would hand back the cleanup's frozen objects and
  change what is measured; a process with a long history can serve one from freed heap memory).
- Pure functions over those states (`compact_snapshot`, `diff_blocks`, `stats_delta`,
  `explain`), unit-tested on synthetic snapshots shaped like torch's, so the message is known
  to work before a GPU ever runs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MiB = 1024 * 1024
MAX_FRAMES = 12
"""Frames kept per stack (innermost first): enough to reach the notebook cell or the library
call that allocated, few enough to keep each state small on the wire."""
MAX_TRACE = 400
"""Trace entries kept per state: the events since the previous state, newest last."""
HISTORY_ENTRIES = 50_000
"""Alloc/free events the CUDA allocator keeps (a ring buffer, a few KB each)."""
NOISY_FRAMES = ("torch/nn/modules/module.py",)
"""Frames that only dispatch (`_call_impl`, `_wrapped_call_impl`) and would crowd out the
frames that say which code allocated."""

Block = dict[str, Any]
State = dict[str, Any]


def compact_snapshot(
    snapshot: Mapping[str, Any],
    device: int = 0,
    since_us: int = -1,
    max_frames: int = 12,
    max_trace: int = 400,
    noisy: Sequence[str] = ("torch/nn/modules/module.py",),
) -> dict[str, Any]:
    """The live blocks of one device and the trace entries after `since_us`, with short stacks.

    `snapshot` is `torch.cuda.memory._snapshot()`'s shape: `segments` (each with `device`,
    `address` and `blocks` of `address`/`size`/`requested_size`/`state`/`frames`) and
    `device_traces` (one list of `action`/`addr`/`size`/`time_us`/`frames` entries per device).
    Blocks without an `address` (older torch) get one from their segment's address and the
    sizes before them. Runs inside the kernel too (its source is sent there), so it uses
    builtins only.
    """

    def stack(frames: Any) -> list[str]:
        lines = []
        for frame in frames or ():
            filename = str(frame.get("filename", "?"))
            if any(part in filename for part in noisy):
                continue
            lines.append(f"{filename}:{frame.get('line', '?')} {frame.get('name', '?')}")
            if len(lines) >= max_frames:
                break
        return lines

    blocks = []
    for segment in snapshot.get("segments", ()):
        if segment.get("device", device) != device:
            continue
        address = int(segment.get("address", 0))
        for block in segment.get("blocks", ()):
            block_address = int(block.get("address", address))
            if block.get("state") == "active_allocated":
                blocks.append(
                    {
                        "address": block_address,
                        "size": int(block.get("size", 0)),
                        "requested_size": int(block.get("requested_size", block.get("size", 0))),
                        "frames": stack(block.get("frames")),
                    }
                )
            address = block_address + int(block.get("size", 0))
    traces = snapshot.get("device_traces") or []
    entries = traces[device] if device < len(traces) else []
    timed = any("time_us" in entry for entry in entries)  # without times: the newest entries
    trace = []
    now_us = since_us
    for entry in entries:
        time_us = int(entry.get("time_us", 0))
        now_us = max(now_us, time_us)
        if (time_us > since_us or not timed) and entry.get("action") != "snapshot":
            trace.append(
                {
                    "action": str(entry.get("action")),
                    "addr": int(entry.get("addr", 0)),
                    "size": int(entry.get("size", 0)),
                    "frames": stack(entry.get("frames")),
                }
            )
    return {"blocks": blocks, "trace": trace[-max_trace:], "now_us": now_us}


def kernel_setup(device: str) -> str:
    """The code that defines `_qj_allocated()` and `_qj_state()` in a kernel testing `device`
    ("cpu" or "cuda"). On "cuda" it also switches allocation history on, so run it before the
    first CUDA allocation: only blocks allocated while it is on carry a stack."""
    return (
        "from collections.abc import Mapping, Sequence\nfrom typing import Any\n\n"
        + inspect.getsource(compact_snapshot)
        + _KERNEL_HELPERS.format(
            device=device,
            entries=HISTORY_ENTRIES,
            frames=MAX_FRAMES,
            trace=MAX_TRACE,
            noisy=NOISY_FRAMES,
        )
    )


_KERNEL_HELPERS = '''
import ctypes as _qj_ctypes, json as _qj_json
import torch

_qj_device = {device!r}
_qj_history = "not asked"
if _qj_device == "cuda":
    try:
        torch.cuda.memory._record_memory_history(
            enabled="all", context="all", stacks="python", max_entries={entries}
        )
        _qj_history = "on"
    except Exception as _qj_exc:  # a torch without the API: figures without stacks
        _qj_history = f"unavailable: {{_qj_exc!r}}"


class _QjMallinfo2(_qj_ctypes.Structure):
    _fields_ = [(_n, _qj_ctypes.c_size_t) for _n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


try:
    _qj_mallinfo2 = _qj_ctypes.CDLL("libc.so.6").mallinfo2
    _qj_mallinfo2.restype = _QjMallinfo2
except (OSError, AttributeError):  # not glibc, or a glibc older than 2.33
    _qj_mallinfo2 = None


def _qj_allocated():
    """The allocator's live bytes: torch's CUDA allocated counter, or on the CPU the bytes
    glibc has mmap()ed for large allocations (None without glibc's mallinfo2)."""
    if _qj_device == "cuda":
        torch.cuda.synchronize()
        return int(torch.cuda.memory_allocated())
    return None if _qj_mallinfo2 is None else int(_qj_mallinfo2().hblkhd)


def _qj_state(since_us=-1):
    """One allocator state, printed as a JSON line (see tests/allocator_diff.py)."""
    state = {{"allocated": _qj_allocated(), "history": _qj_history}}
    if _qj_device == "cuda":
        try:
            stats = torch.cuda.memory_stats()
            state["stats"] = {{k: v for k, v in stats.items() if isinstance(v, int)}}
            state.update(compact_snapshot(
                torch.cuda.memory._snapshot(), torch.cuda.current_device(), since_us,
                {frames}, {trace}, {noisy!r}))
        except Exception as exc:
            state["snapshot_error"] = repr(exc)
    print(_qj_json.dumps(state))
'''


# ----------------------------------------------------------------------------- pure analysis


def _key(block: Mapping[str, Any]) -> tuple[int, int, tuple[str, ...]]:
    """A block's identity across states: an address reused by a new allocation of the same
    size differs in its stack."""
    return int(block["address"]), int(block["size"]), tuple(map(str, block.get("frames", ())))


def diff_blocks(
    before: Iterable[Mapping[str, Any]], after: Iterable[Mapping[str, Any]]
) -> tuple[list[Block], list[Block]]:
    """(blocks gone since `before`, blocks new in `after`), biggest first."""
    old = {_key(b): dict(b) for b in before}
    new = {_key(b): dict(b) for b in after}
    gone = [b for k, b in old.items() if k not in new]
    added = [b for k, b in new.items() if k not in old]
    return (
        sorted(gone, key=lambda b: -int(b["size"])),
        sorted(added, key=lambda b: -int(b["size"])),
    )


def stats_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """The allocator counters that changed (current values and event counts only)."""
    return {
        key: (before.get(key, 0), value)
        for key, value in sorted(after.items())
        if (key.endswith(".all.current") or key.startswith("num_")) and before.get(key, 0) != value
    }


def free_stack(trace: Iterable[Mapping[str, Any]], address: int) -> list[str]:
    """The stack that asked to free the block at `address`, from the trace (newest wins)."""
    frames: list[str] = []
    for entry in trace:
        if entry.get("action") == "free_requested" and int(entry.get("addr", -1)) == address:
            frames = list(entry.get("frames", ()))
    return frames


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    sign = "-" if n < 0 else ""
    n = abs(n)
    return f"{sign}{n / MiB:.1f} MiB" if n >= MiB // 10 else f"{sign}{n} B"


def _describe_blocks(
    title: str, blocks: Sequence[Mapping[str, Any]], trace: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
    if not blocks:
        return []
    total = sum(int(b["size"]) for b in blocks)
    lines = [f"{title}: {len(blocks)} block(s), {_size(total)}"]
    for block in blocks[:10]:
        lines.append(
            f"  {_size(int(block['size']))} at {int(block['address']):#x} "
            f"(requested {int(block.get('requested_size', block['size']))} B), allocated at:"
        )
        lines.extend(f"      {f}" for f in block.get("frames") or ["(no stack recorded)"])
        freed_at = free_stack(trace, int(block["address"]))
        if freed_at:
            lines.append("    freed at:")
            lines.extend(f"      {f}" for f in freed_at)
    if len(blocks) > 10:
        lines.append(f"  ... and {len(blocks) - 10} more")
    return lines


def explain(
    figures: Mapping[str, Any],
    baseline: State,
    held: State,
    after: State,
    previous: State | None = None,
) -> str:
    """Why a round trip did not return to its baseline, as far as the states can tell.

    `figures`: baseline/held/after bytes, `gc_pass` and `actions` (name, freed bytes, released
    names, error) of the cleanup report. The states are `_qj_state()` outputs at the baseline,
    while held, after the cleanup and (optionally) after the previous test's cleanup, which
    shows what appeared between two tests.
    """
    lines = _figure_lines(figures)
    if "blocks" not in after:
        reason = after.get("snapshot_error") or "no allocator snapshot on this device"
        lines.append(f"blocks: not available ({reason}; history {after.get('history', '?')})")
        return "\n".join(lines)
    lines += _block_lines(baseline, held, after)
    if previous is not None and "blocks" in previous:
        went, came = diff_blocks(previous["blocks"], baseline.get("blocks", ()))
        lines += _describe_blocks(
            "appeared between the previous test's cleanup and this baseline",
            came,
            baseline.get("trace", ()),
        )
        lines += _describe_blocks(
            "freed between the previous test's cleanup and this baseline", went
        )
    delta = stats_delta(baseline.get("stats", {}), after.get("stats", {}))
    if delta:
        lines.append("allocator stats, baseline -> after:")
        lines.extend(f"  {key}: {old} -> {new}" for key, (old, new) in delta.items())
    lines.append(f"allocation history: {after.get('history', '?')}")
    return "\n".join(lines)


def _figure_lines(figures: Mapping[str, Any]) -> list[str]:
    base, kept, end = figures.get("baseline"), figures.get("held"), figures.get("after")
    head = f"allocator: baseline {_size(base)}, held {_size(kept)}, after {_size(end)}"
    if base is not None and kept is not None and end is not None:
        head += f" (held - baseline {_size(kept - base)}, after - baseline {_size(end - base)})"
    lines = [
        head,
        f"cleanup gc: {figures.get('gc_pass') or '?'}",
        "cleanup actions (bytes freed while each ran, what it released):",
    ]
    for name, freed, released, error in figures.get("actions", ()):
        lines.append(
            f"  {name}: {_size(freed)}"
            + (f" ({', '.join(released)})" if released else "")
            + (f" FAILED {error}" if error else "")
        )
    return lines


def _block_lines(baseline: State, held: State, after: State) -> list[str]:
    """Blocks freed beyond the test's own, own blocks left alive, and new blocks left alive."""
    before_blocks = baseline.get("blocks", ())
    _, own = diff_blocks(before_blocks, held.get("blocks", ()))
    own_keys = {_key(b) for b in own}
    freed, appeared = diff_blocks(before_blocks, after.get("blocks", ()))
    return [
        *_describe_blocks(
            "freed beyond the test's own blocks (alive at the baseline)",
            freed,
            after.get("trace", ()),
        ),
        *_describe_blocks(
            "the test's own blocks still alive after the cleanup",
            [b for b in appeared if _key(b) in own_keys],
        ),
        *_describe_blocks(
            "allocated after the holder and still alive after the cleanup",
            [b for b in appeared if _key(b) not in own_keys],
            after.get("trace", ()),
        ),
    ]
