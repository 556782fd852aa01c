"""`cleanup()`: the release actions composed, measured before and after, and reported.

`gc.collect()` and `torch.cuda.empty_cache()` alone free little in a notebook, because the
memory is still *referenced*: by IPython's output cache (`Out`, `_`, `_N`, the display hook's
own attributes, the last ExecutionResult), by the last exception's traceback frames
(`sys.last_*`, IPython's traceback handler and ExecutionResult), by caches kept on the model.
Each holder has its own small release action (release_actions.py); tensor_scan.py finds the
tensors and holders.py names what still holds them.

`cleanup()` runs the actions in order (references first, then one garbage collection — of the
objects created since the last cleanup, or of all when incremental_gc's rules say so — then the
allocator caches, so the freed blocks really go back to the driver or the OS), measures
memory before and after, and never raises: a failing action is recorded in the report and the
others still run. torch is never imported here; if the process has not imported it, it holds no
tensors and the tensor-related work is skipped.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from .cleanup_report import (
    HOST_NOISE_BYTES,
    ActionResult,
    Caller,
    CleanupReport,
    DeviceChange,
    DeviceMemory,
    drop,
)
from .holders import find_holders, kept_memory_text
from .incremental_gc import COLLECTOR
from .memory import cuda_in_use, imported_torch, live_tensor_bytes, process_rss, trim_host_heap
from .refusals import shown_at_the_callers_line
from .release_actions import (
    release_allocator_caches,
    release_cycles,
    release_dropped_names,
    release_dynamo,
    release_generation_leftovers,
    release_heap_slack,
    release_last_exception,
    release_output_cache,
)
from .user_namespace import script_variables, user_variables

_log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- measuring


@dataclass
class _Nvml:
    """One NVML reader for cleanup reports, opened on first use when CUDA is in use. A failed
    open or read is not remembered here: the reader tries NVML again itself (after
    `INIT_RETRY_S`, or at once after a driver reset), where one failure had ended NVML figures
    in the reports until the extension was unloaded."""

    reader: Any = None

    def process_memory(self) -> dict[str, int | None]:
        """Bytes this process uses per torch CUDA device ('cuda:0'), None where unknown."""
        try:
            from . import memory, nvml

            if self.reader is None:
                self.reader = nvml.NvmlReader()
            self.reader.open()
            if not self.reader.opened:
                return {}
            pids = {os.getpid()}
            return {  # torch's devices only, by UUID: a few NVML calls, not a poll of every GPU
                f"cuda:{device.index}": self.reader.process_bytes(device.uuid, pids)
                if device.uuid
                else None
                for device in memory.read_torch()
            }
        except Exception:
            _log.debug("NVML reading failed", exc_info=True)
            return {}

    def close(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()
        self.reader = None


_NVML = _Nvml()


def shutdown_nvml() -> None:
    """Close the NVML handle cleanup reports opened (called when the extension unloads)."""
    _NVML.close()


def _probe() -> tuple[int, dict[int, tuple[int, int]]]:
    """The cheap counters (host RSS; torch allocated and reserved per CUDA device)."""
    cuda: dict[int, tuple[int, int]] = {}
    torch = imported_torch()
    if torch is not None and cuda_in_use():
        for index in range(torch.cuda.device_count()):
            cuda[index] = (
                int(torch.cuda.memory_allocated(index)),
                int(torch.cuda.memory_reserved(index)),
            )
    return process_rss(), cuda


def _probe_drop(
    before: tuple[int, dict[int, tuple[int, int]]], after: tuple[int, dict[int, tuple[int, int]]]
) -> int:
    rss = drop(before[0], after[0])
    freed = rss if rss >= HOST_NOISE_BYTES else 0
    for index, (allocated, reserved) in before[1].items():
        now_allocated, now_reserved = after[1].get(index, (allocated, reserved))
        freed += max(drop(allocated, now_allocated), drop(reserved, now_reserved))
    return freed


def _snapshot(count_tensors: bool) -> tuple[dict[str, DeviceMemory], dict[str, int] | None]:
    """Every device's figures, and (when counting) the live tensor bytes per device."""
    torch = imported_torch()
    cpu_tensors = None
    totals = None
    rss = process_rss()  # first: counting tensors leaves heap slack of its own behind
    if count_tensors:
        totals = live_tensor_bytes() if torch is not None else {}
        cpu_tensors = totals.get("cpu", 0)
        trim_host_heap()  # or the next cleanup reports the count's garbage as heap it returned
    devices = {"cpu": DeviceMemory("cpu", cpu_tensors, None, rss)}
    if torch is not None and cuda_in_use():
        nvml = _NVML.process_memory()
        for index in range(torch.cuda.device_count()):
            name = f"cuda:{index}"
            devices[name] = DeviceMemory(
                name,
                int(torch.cuda.memory_allocated(index)),
                int(torch.cuda.memory_reserved(index)),
                nvml.get(name),
            )
    return devices, totals


# ----------------------------------------------------------------------------- composing

_listeners: list[Callable[[CleanupReport], None]] = []


def add_cleanup_listener(callback: Callable[[CleanupReport], None]) -> Callable[[], None]:
    """Call `callback` with every CleanupReport (the gauge resets its "peak since last cleanup"
    and watches the memory that survives cleanups). Returns the function that removes it; a
    failing listener is logged and never fails a cleanup; one that cannot be called at all is
    refused now, not logged at every cleanup to come."""
    if not callable(callback):
        raise TypeError(
            f"add_cleanup_listener({callback!r}): needs a function that takes a CleanupReport"
        )
    _listeners.append(callback)

    def remove() -> None:
        if callback in _listeners:
            _listeners.remove(callback)

    return remove


@shown_at_the_callers_line
def cleanup(
    *,
    drop: Iterable[str] | str = (),
    dynamo: bool = False,
    verbose: bool = False,
    count_tensors: bool | None = None,
    full: bool = False,
    shell: Any | None = None,
    caller: Caller = "python",
    keep_last_error: bool = False,
) -> CleanupReport:
    """Release everything that holds memory without being asked for by name, and report it.

    Order: `drop` names (only those given), the output cache, the last exception, generation
    leftovers, torch.compile state (`dynamo=True` only), one gc, the allocator caches. The gc
    scans the objects created since the last cleanup, or all of them when `full` or one of
    incremental_gc's rules (first cleanup, a deleted or rebound variable, ...) asks for it.
    `shell` defaults to the running IPython (none: the shell-held actions are skipped), so
    `cleanup()` works with no arguments inside a kernel. `verbose` adds the biggest remaining
    holders; `count_tensors` (default: `verbose`) measures live CPU tensor bytes before and
    after, which walks every object (so its gc is full too). Never raises once it runs (a `drop`
    that names no variables, or given outside IPython, is refused first); never unloads the
    model. `caller` words the report's advice: Python's arguments (`cleanup(full=True)`), or
    "magic" for `%qwen3_clean`'s flags (`--full`). `keep_last_error` leaves the last exception
    and its frames for `%debug` and `%tb` (autoclean after a failed cell).
    """
    names = _drop_names(drop)
    from .generation import check_arguments  # `verbose="no"` is truthy: it meant yes

    switches: dict[str, object] = {
        "dynamo": dynamo,
        "verbose": verbose,
        "full": full,
        "keep_last_error": keep_last_error,
    }
    if count_tensors is not None:
        switches["count_tensors"] = count_tensors
    check_arguments(flags=switches)
    if caller not in ("python", "magic"):
        raise ValueError(f"caller={caller!r}: must be 'python' or 'magic'")
    if shell is None:
        shell = _current_shell()
    if names and shell is None:
        raise RuntimeError(  # no namespace to drop from: it would free nothing, and say so
            "drop= names variables of an IPython kernel's namespace, and none is running here: "
            "del them yourself (del x), then call cleanup()"
        )
    refused = _refusal(names, shell) if shell is not None else None
    if refused is not None:
        raise NameError(refused)
    started = time.perf_counter()
    count = verbose if count_tensors is None else count_tensors
    COLLECTOR.last = None
    try:
        start = _probe()  # before counting tensors: the count's own garbage is not slack
        before, _ = _snapshot(count)
        heap = _run_action("host heap", release_heap_slack, start)
        reason = _full_gc_reason(full, dynamo, count)
        actions = (heap, *_run_actions(shell, names, dynamo, reason, keep_last_error))
        if count:
            COLLECTOR.hand_back("the last cleanup counted every tensor")
        after, totals = _snapshot(count)
        holders = find_holders(shell, totals=totals) if verbose else ()
        devices = tuple(
            DeviceChange(name, before[name], after.get(name, before[name])) for name in before
        )
        gc_pass = COLLECTOR.last.describe() if COLLECTOR.last is not None else ""
        incremental = COLLECTOR.last is not None and not COLLECTOR.last.full
        report = CleanupReport(
            devices,
            actions,
            holders,
            time.perf_counter() - started,
            gc_pass=gc_pass,
            gc_incremental=incremental,
            kept=kept_memory_text(),
            verbose=verbose,
            caller=caller,
        )
    except Exception as exc:  # never into the user's cell
        _log.exception("qwen3_jupyter cleanup failed")
        report = CleanupReport(
            (), (), (), time.perf_counter() - started, _one_line(exc), caller=caller
        )
    for listener in list(_listeners):
        try:
            listener(report)
        except Exception:
            _log.exception("cleanup listener failed")
    return report


def _drop_names(drop: Iterable[str] | str) -> tuple[str, ...]:
    """The variable names in `drop`: a str is one name (iterating it deleted each single-letter
    variable it spells: drop="ab" took a and b, not ab)."""
    if isinstance(drop, str):
        return (drop,)
    try:
        names = tuple(drop)
    except TypeError:
        raise TypeError(f"drop={drop!r}: must be variable names (a str or a list of str)") from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"drop: {name!r} ({type(name).__name__}) is not a variable name")
    return names


def _refusal(names: tuple[str, ...], shell: Any) -> str | None:
    """Why `drop` is refused, if it is. A name with no variable behind it (a typo: drop="bgi")
    did nothing, and said nothing: refused before anything is dropped, with the name it likely
    meant. An output entry (`_4`) is IPython's: the cleanup purges it when it holds tensors."""
    variables = user_variables(shell)
    for name in names:
        if name in shell.user_ns and name not in variables:
            return (
                f"drop: {name} is IPython's, not a variable (an output entry: the cleanup "
                "purges it when it holds tensors); nothing was dropped"
            )
    missing = [name for name in names if name not in variables]
    if not missing:
        return None
    close = difflib.get_close_matches(missing[0], list(variables), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"drop: no variable named {', '.join(map(repr, missing))}{hint}; nothing was dropped"


def _full_gc_reason(full: bool, dynamo: bool, count: bool) -> str:
    if full:
        return "asked for"
    if dynamo:
        return "torch.compile state was reset"
    if count:
        return "needed to count tensors"
    return ""


def _current_shell() -> Any | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


FOREGROUND_ACTIONS = ("output cache", "last exception")
"""What belongs to the cell the user is running: a cleanup from a thread (an `inference()`
block's end there) wiped the exception the user was about to `%debug`, at an arbitrary
moment."""
FROM_A_THREAD = "a cleanup in a thread leaves the notebook's outputs and last exception alone"


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


KEPT_FOR_DEBUG = "kept for %debug and %tb until the next cell"


def _run_actions(
    shell: Any | None,
    drop: tuple[str, ...],
    dynamo: bool,
    full_gc_reason: str,
    keep_last_error: bool = False,
) -> tuple[ActionResult, ...]:
    steps: list[tuple[str, Callable[[], tuple[str, ...]]]] = []
    if shell is not None:
        if drop:
            steps.append(("dropped names", lambda: release_dropped_names(shell, drop)))
        steps.append(("output cache", lambda: release_output_cache(shell)))
    steps.append(("last exception", lambda: release_last_exception(shell)))
    steps.append(("generation leftovers", release_generation_leftovers))
    if dynamo:
        steps.append(("dynamo", release_dynamo))
    steps.append(
        (
            "cycles",
            lambda: release_cycles(
                user_variables(shell) if shell is not None else script_variables(),
                full_gc_reason,
            ),
        )
    )
    steps.append(("allocator caches", release_allocator_caches))
    from .model_use import ModelBusy
    from .models import HOLDER

    busy, entering = "", HOLDER.in_use("a cleanup")
    hold: AbstractContextManager[None] | None = entering
    try:
        entering.__enter__()  # entered here, so the hold is this frame's while the actions run
    except ModelBusy:
        busy, hold = f"the model is busy with {HOLDER.use.user or 'a call in another thread'}", None
    results = []
    probe = _probe()
    automatic_gc = gc.isenabled()
    gc.disable()  # cycles are collected by the "cycles" action, not mid-way by an allocation
    try:
        for name, action in steps:
            if busy and name in MODEL_ACTIONS:
                results.append(ActionResult(name, skipped=busy))
                continue
            if name in FOREGROUND_ACTIONS and not on_main_thread():
                results.append(ActionResult(name, skipped=FROM_A_THREAD))
                continue
            if name == "last exception" and keep_last_error:
                results.append(ActionResult(name, skipped=KEPT_FOR_DEBUG))
                continue
            results.append(_run_action(name, action, probe))
            probe = _probe()
    finally:
        if automatic_gc:
            gc.enable()
        if hold is not None:
            hold.__exit__(None, None, None)
    return tuple(results)


MODEL_ACTIONS = ("generation leftovers", "dynamo", "allocator caches")
"""The actions that touch the model, its engines or the CUDA allocator: skipped while another
thread generates (emptying the cache or resetting peaks mid-capture breaks its CUDA graph)."""


def _run_action(
    name: str,
    action: Callable[[], tuple[str, ...]],
    probe: tuple[int, dict[int, tuple[int, int]]],
) -> ActionResult:
    started = time.perf_counter()
    error = None
    released: tuple[str, ...] = ()
    try:
        released = action()
    except Exception as exc:
        _log.warning("qwen3_jupyter cleanup: %s failed", name, exc_info=True)
        error = _one_line(exc)
    trim_host_heap()  # so host memory this action freed shows in RSS now, attributed to it
    seconds = time.perf_counter() - started
    return ActionResult(name, released, _probe_drop(probe, _probe()), seconds, error)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
