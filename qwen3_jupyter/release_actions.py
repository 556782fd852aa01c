"""One release action per memory holder (accelerate's `release_memory` shape).

Each action lets go of one kind of reference a notebook keeps (IPython's output cache, the last
exception's frames, caches left on the model, compiled state, cycles, allocator caches) and
returns the names of what it let go. None deletes anything a user could still want by name:
user variables go only when the caller names them, and the loaded model stays. `cleanup()`
composes them and measures what they freed."""

from __future__ import annotations

import contextlib
import gc
import inspect
import itertools
import re
import sys
import types
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .incremental_gc import COLLECTOR
from .memory import cuda_in_use, imported_torch, trim_host_heap
from .tensor_scan import holds_device_memory
from .user_namespace import user_variables

_OUT_NAME = re.compile(r"_\d+")
_MODEL_CACHE_ATTRS = ("_cache", "past_key_values", "_past_key_values", "_kv_cache")


def release_dropped_names(shell: Any, names: Iterable[str]) -> tuple[str, ...]:
    """Delete exactly `names` from the user namespace (the caller decides which: `--drop`
    passes the names a cell created, minus `--keep`)."""
    removed = []
    for name in names:
        if name in shell.user_ns:
            del shell.user_ns[name]
            removed.append(name)
    return tuple(removed)


def release_output_cache(shell: Any) -> tuple[str, ...]:
    """Purge the output-cache entries that hold tensors, models or CUDA arrays; keep the rest.

    IPython keeps a shown result in `Out`/`_oh` (the history manager's `output_hist`, normally
    one dict), in `_N`, in `_`, `__`, `___` *and* in the display hook's own attributes of those
    names, and in the ExecutionResult of the cell (`last_execution_result.result`). A `_` or
    `_5` the user assigned is the user's and is left alone.
    """
    released: list[str] = []
    purged: set[int] = set()
    kept_alive: list[Any] = []  # until the end, so no id in `purged` is reused meanwhile
    verdicts: dict[int, bool] = {}

    def holds(value: Any) -> bool:
        """holds_device_memory, once per object: `Out[3]`, `_3` and `_` are often one list,
        and a long one costs an exact walk."""
        if id(value) not in verdicts:
            kept_alive.append(value)
            verdicts[id(value)] = holds_device_memory(value) or _defined_with_memory(value)
        return verdicts[id(value)]

    ns = shell.user_ns
    hidden = getattr(shell, "user_ns_hidden", {})
    caches: list[dict[Any, Any]] = []
    history = getattr(shell, "history_manager", None)
    # IPython's caches only: a dict of the user's own bound to `Out` is their variable.
    own = [ns[name] for name in ("_oh", "Out") if name in ns and hidden.get(name) is ns[name]]
    for candidate in (getattr(history, "output_hist", None), *own):
        if isinstance(candidate, dict) and all(candidate is not c for c in caches):
            caches.append(candidate)
    for cache in caches:
        for key, value in list(cache.items()):
            if id(value) in purged or holds(value):
                purged.add(id(value))
                kept_alive.append(value)
                del cache[key]
                if f"Out[{key}]" not in released:
                    released.append(f"Out[{key}]")
    for name in [n for n in ns if _OUT_NAME.fullmatch(n)]:
        value = ns[name]
        set_by_ipython = name in hidden and hidden[name] is value
        if id(value) in purged or (set_by_ipython and holds(value)):
            purged.add(id(value))
            kept_alive.append(value)
            del ns[name]
            hidden.pop(name, None)
            released.append(name)
    hook = getattr(shell, "displayhook", None)
    for name in ("_", "__", "___"):
        value = getattr(hook, name, None)
        if value is not None and (id(value) in purged or holds(value)):
            setattr(hook, name, "")
            if ns.get(name) is value:
                ns[name] = ""
                if name in hidden:
                    hidden[name] = ""
            released.append(name)
        # Once a cell assigns `_` itself (`for _ in ...`), IPython stops moving `_`, `__` and
        # `___` along: the namespace can keep an output the hook has already let go of.
        held = ns.get(name)
        set_by_ipython = name in hidden and hidden[name] is held and held is not value
        if set_by_ipython and (id(held) in purged or holds(held)):
            ns[name] = hidden[name] = ""
            if name not in released:
                released.append(name)
        # And `user_ns_hidden` keeps the output IPython last pushed under that name: the only
        # reference left to a shown tensor once the user bound `_` (reported released, alive).
        stale = hidden.get(name)
        unseen = stale is not None and stale is not ns.get(name)
        if unseen and (id(stale) in purged or holds(stale)):
            hidden[name] = ""
            if name not in released:
                released.append(name)
    for label, result in _execution_results(shell):
        value = getattr(result, "result", None)
        if value is not None and (id(value) in purged or holds(value)):
            result.result = None
            released.append(f"{label}.result")
    kept_alive.clear()
    return tuple(released)


def _release_debugger(debugger: Any) -> bool:
    """Let go of the frames `%debug` inspected; whether it held any. `forget()` leaves
    `curframe_locals` (the inspected frame's locals: its tensors stayed alive, reported as
    released)."""
    held = any(
        getattr(debugger, name, None) for name in ("botframe", "curframe", "curframe_locals")
    )
    if not held:
        return False
    with contextlib.suppress(Exception):
        debugger.forget()
    debugger.reset()
    for name, empty in (("curframe_locals", {}), ("curframe", None), ("stack", [])):
        with contextlib.suppress(Exception):  # a property on newer Pythons: nothing to drop
            setattr(debugger, name, empty)
    return True


def _execution_results(shell: Any) -> list[tuple[str, Any]]:
    """The last cell's ExecutionResult and the running cell's (they differ during a cell)."""
    found: list[tuple[str, Any]] = []
    last = getattr(shell, "last_execution_result", None)
    if last is not None:
        found.append(("last_execution_result", last))
    current = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    if current is not None and current is not last:
        found.append(("displayhook.exec_result", current))
    return found


def _defined_with_memory(value: Any) -> bool:
    """Whether a function or class shown as a cell's output keeps tensors inside it (its
    closure, defaults, class attributes), which the scan does not enter: `make()` returning a
    lambda over a 190 MiB tensor stayed in `Out` through every cleanup."""
    from .holders import inner_holdings

    return any(holds_device_memory(inside) for _, inside, _ in inner_holdings("", value))


def release_last_exception(shell: Any | None) -> tuple[str, ...]:
    """Let go of the last exception's traceback, whose frames keep every local tensor alive.

    Drops `sys.last_type/value/traceback` (and `sys.last_exc` on 3.12+), IPython's traceback
    handler's `tb` and debugger frames, and strips `__traceback__` from the exceptions that the
    ExecutionResults keep. The exception objects themselves stay where IPython and ipykernel
    read them (a failed cell still reports its error); only their frames go, so `%debug` has
    nothing to inspect afterwards. An exception held anywhere but by Python and IPython (`except
    E as e: err = e`, `log["fit"].append(e)`, a closure, however deep) is the user's: its data
    and traceback are left as they are, and what they hold is reported under the variable's
    name.
    """
    released: list[str] = []
    exceptions: list[BaseException] = []
    for name in ("last_exc", "last_value"):
        value = getattr(sys, name, None)
        if isinstance(value, BaseException):
            exceptions.append(value)
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)
            released.append(f"sys.{name}")
    kept: list[tuple[str, str, BaseException]] = []
    if shell is not None:
        handler: Any = getattr(shell, "InteractiveTB", None)
        if getattr(handler, "tb", None) is not None:
            handler.tb = None
            released.append("InteractiveTB.tb")
        debugger = getattr(handler, "pdb", None)
        if debugger is not None and _release_debugger(debugger):
            released.append("debugger frames")
        kept = kept_exceptions(shell)
        exceptions.extend(value for _, _, value in kept)
    current = sys.exc_info()[1]
    chain = [
        exc
        for exc in _exception_chain(exceptions)
        if exc is not current and _holds_something_to_release(exc)
    ]
    users = _users_exceptions(shell, chain, ignored=[exceptions, chain, kept, *kept])
    for label, name, value in kept:
        if id(value) in users or value not in chain:
            continue
        if value.__traceback__ is not None:
            released.append(f"{label}.{name}.__traceback__")
        released.extend(f"{label}.{name}.{part}" for part in _release_contents(value))
    for exc in chain:
        if id(exc) not in users:
            exc.__traceback__ = None
            _release_contents(exc)
    return tuple(released)


def _holds_something_to_release(exc: BaseException) -> bool:
    """Whether `exc` still has a traceback or tensors in its arguments or attributes (one a
    cleanup released already has neither: the next cleanup need not look for its holders)."""
    if exc.__traceback__ is not None or any(holds_device_memory(arg) for arg in exc.args):
        return True
    return any(holds_device_memory(value) for value in getattr(exc, "__dict__", {}).values())


USERS_WALK_DEPTH = 3
"""How many steps from a user variable an exception is looked for first (then by its holders):
`run.err` is two (the object, its attributes), `log["fit"][0]` two, `runs[0].errors[-1]`
three."""
USERS_WALK_BUDGET = 20_000
"""How many objects that look visits at most (a few milliseconds), whatever the namespace."""


def _users_exceptions(
    shell: Any | None, candidates: list[BaseException], ignored: list[Any]
) -> set[int]:
    """The ids of the `candidates` the user holds, with the exceptions their causes and
    contexts lead to: those the user's variables reach within USERS_WALK_DEPTH steps
    (`_reached_from`, cheap), and of the others those anything but Python and IPython refers
    to (`_held_beyond`: a pass over the whole heap, which makes the next gc pass a full one).
    Why both: the walk alone missed an exception past its budget (a few large lists defined
    first), deeper than its steps, or where it does not look (a closure, a deque, a dict key,
    `__slots__`, a class attribute), and a cleanup then made the tensor in that exception a
    string and dropped its traceback."""
    if not candidates or shell is None:
        return set()
    reached = _reached_from(user_variables(shell).values(), _ipython_walls(shell))
    unreached = [exc for exc in candidates if id(exc) not in reached]
    if not unreached:
        return reached
    held = _held_beyond(unreached, shell, [*ignored, unreached])
    return reached | {id(exc) for exc in _exception_chain(held)}


def _ipython_walls(shell: Any) -> set[int]:
    """IPython's own objects, which the walk from the variables must not enter: through
    `ip = get_ipython()` it reached the failed cell's ExecutionResult, and IPython's own
    reference to the exception counted as the user's (its frames were never freed)."""
    walls = [shell, getattr(shell, "displayhook", None), getattr(shell, "history_manager", None)]
    walls += [getattr(shell, "user_ns_hidden", None), getattr(shell, "InteractiveTB", None)]
    walls += [result for _, result in _execution_results(shell)]
    return {id(wall) for wall in walls if wall is not None}


def _reached_from(values: Iterable[Any], walls: set[int], per_container: int = 1000) -> set[int]:
    """The ids of the exceptions the user's variables reach, with their causes and contexts:
    bound to a name (`err = e`), in a list or dict (`errors.append(e)`, `log["fit"][0]`), or on
    an object (`run.err = e`), within USERS_WALK_DEPTH steps, the first `per_container` items of
    each container, USERS_WALK_BUDGET objects in all, never entering `walls`."""
    found: list[BaseException] = []
    seen: set[int] = set(walls)
    level = list(values)
    for depth in range(USERS_WALK_DEPTH + 1):
        following: list[Any] = []
        for value in level:
            if id(value) in seen or len(seen) >= USERS_WALK_BUDGET:
                continue
            seen.add(id(value))
            if isinstance(value, BaseException):
                found.append(value)
            elif depth < USERS_WALK_DEPTH:
                following.extend(_held_by(value, per_container))
        level = following
    return {id(exc) for exc in _exception_chain(found)}


def _held_beyond(
    exceptions: list[BaseException], shell: Any, ignored: list[Any]
) -> list[BaseException]:
    """Those of `exceptions` something refers to besides Python (`sys`, frames, tracebacks,
    other exceptions: a cause or context), IPython's ExecutionResults and `ignored` (the
    caller's own lists): a list, dict, object, closure cell… of the user's, at any depth."""
    internal = {id(item) for item in ignored}
    internal.add(id(sys.__dict__))
    for _, result in _execution_results(shell):
        internal.add(id(result))
        internal.add(id(getattr(result, "__dict__", None)))
    referrers = [
        referrer
        for referrer in gc.get_referrers(*exceptions)
        if id(referrer) not in internal and not isinstance(referrer, _NOT_A_HOLDER)
    ]
    if not referrers:
        return []
    # A holder nothing else refers to is no variable's: the argument tuple of the call above
    # (`*exceptions` packed), which the heap pass finds. So is this call's own.
    internal.update((id(referrers), id(exceptions)))
    candidates = {id(referrer) for referrer in referrers}
    referred: set[int] = set()
    for holder in gc.get_referrers(*referrers):
        if (
            id(holder) in internal
            or isinstance(holder, types.FrameType)
            or _same_items(holder, referrers)
        ):
            continue
        referred.update(id(item) for item in gc.get_referents(holder) if id(item) in candidates)
    held = {
        id(item)
        for referrer in referrers
        if id(referrer) in referred
        for item in gc.get_referents(referrer)
    }
    return [exc for exc in exceptions if id(exc) in held]


def _same_items(holder: Any, items: list[Any]) -> bool:
    """Whether `holder` is a tuple of exactly `items` (a call's packed arguments)."""
    return (
        type(holder) is tuple
        and len(holder) == len(items)
        and all(a is b for a, b in zip(holder, items, strict=True))
    )


_NOT_A_HOLDER = (
    types.FrameType,
    types.TracebackType,
    BaseException,
    type,
    types.ModuleType,
)
"""Referrers that are Python's own keeping, not the user's: a frame (the failing call's, kept
by its traceback), a traceback, another exception (the one it caused), a class or module."""


def _held_by(value: Any, per_container: int) -> list[Any]:
    """What `value` holds that may be an exception or lead to one: a container's items, an
    instance's attributes (not a class's, a module's or a function's: those are code)."""
    if not gc.is_tracked(value) or isinstance(value, (type, types.ModuleType, *_NOT_FOLLOWED)):
        return []
    if isinstance(value, dict):
        return list(itertools.islice(value.values(), per_container))
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(itertools.islice(value, per_container))
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        return list(itertools.islice(attributes.values(), per_container))
    return []


_NOT_FOLLOWED = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    weakref.ProxyType,
    weakref.CallableProxyType,
)


def kept_exceptions(shell: Any) -> list[tuple[str, str, BaseException]]:
    """(ExecutionResult label, attribute, exception) for the exceptions IPython keeps."""
    found = []
    for label, result in _execution_results(shell):
        for name in ("error_in_exec", "error_before_exec"):
            value = getattr(result, name, None)
            if isinstance(value, BaseException):
                found.append((label, name, value))
    return found


def _release_contents(exc: BaseException) -> list[str]:
    """Replace what an exception's args and attributes hold in tensors by its repr: the message
    still reads the same (`assert x.sum() == 0, x` puts the tensor itself in `args`), the
    memory goes. Returns the parts replaced ("args", attribute names)."""
    replaced = []
    if any(holds_device_memory(arg) for arg in exc.args):
        exc.args = tuple(_stand_in(arg) if holds_device_memory(arg) else arg for arg in exc.args)
        replaced.append("args")
    attrs = getattr(exc, "__dict__", {})
    for name, value in list(attrs.items()):
        if holds_device_memory(value):
            attrs[name] = _stand_in(value)
            replaced.append(name)
    return replaced


def _stand_in(value: Any) -> str:
    """A bounded repr, kept in place of a value that holds tensors."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 2000 else f"{text[:2000]}..."


def _exception_chain(roots: Iterable[BaseException]) -> Iterator[BaseException]:
    """Each exception once: the roots, their causes and contexts, and exception-group members."""
    seen: set[int] = set()
    stack = list(roots)
    while stack and len(seen) < 1000:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        stack.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        stack.extend(e for e in getattr(exc, "exceptions", ()) if isinstance(e, BaseException))


_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def release_traceback_locals(exc: BaseException) -> int:
    """Clear the locals of the finished function frames in `exc`'s traceback (and its chain).

    For an exception that is still on its way to the user (the `inference()` block that raised):
    its traceback still prints, but the tensors its failed calls held are released now instead
    of at the next cleanup. Frames still running (the caller's) cannot be cleared and are kept,
    and so are generator and coroutine frames (clearing one would close a suspended generator).
    Returns how many frames were cleared.
    """
    cleared = 0
    for item in _exception_chain([exc]):
        tb = item.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            flags = frame.f_code.co_flags
            plain_function = flags & inspect.CO_OPTIMIZED and not flags & _SUSPENDABLE
            if plain_function and "__tracebackhide__" not in frame.f_code.co_varnames:
                try:
                    frame.clear()
                    cleared += 1
                except RuntimeError:  # still executing
                    pass
            tb = tb.tb_next
    return cleared


def release_generation_leftovers() -> tuple[str, ...]:
    """Drop caches that generation left on the loaded model and the session's last outputs.

    On the model (every submodule): transformers `Cache` objects and the attributes older
    transformers versions keep a KV cache in (`_cache`, `past_key_values`, ...). On the session:
    `last_*` attributes that hold tensors (a raw generate output kept for inspection). The model
    itself, its weights and the conversation are never touched.
    """
    from .models import HOLDER
    from .session import SESSION

    released: list[str] = []
    torch = imported_torch()
    if torch is None:
        return ()
    loaded = HOLDER.loaded
    model = getattr(loaded, "model", None)
    if isinstance(model, torch.nn.Module):
        cache_types = _cache_types()
        for prefix, module in model.named_modules():
            attrs = vars(module)
            for attr in list(attrs):
                value = attrs[attr]
                if isinstance(value, cache_types) or (
                    attr in _MODEL_CACHE_ATTRS
                    and value is not None
                    and not isinstance(value, torch.nn.Parameter)
                ):
                    delattr(module, attr)
                    released.append(f"model{'.' + prefix if prefix else ''}.{attr}")
    for attr, value in list(vars(SESSION).items()):
        if attr.startswith("last_") and value is not None and holds_device_memory(value):
            setattr(SESSION, attr, None)
            released.append(f"SESSION.{attr}")
    return tuple(released)


def _cache_types() -> tuple[type, ...]:
    utils = sys.modules.get("transformers.cache_utils")
    cache = getattr(utils, "Cache", None)
    return (cache,) if isinstance(cache, type) else ()


def release_dynamo() -> tuple[str, ...]:
    """Reset torch.compile state (compiled graphs, guards, cudagraph pools), the compiled
    forward transformers caches on the model, and this kernel's fast decode path (built on
    torch.compile; the next call builds it again). Skipped when torch._dynamo was never
    imported."""
    from .models import HOLDER

    with HOLDER.in_use("a cleanup of torch.compile state"):  # not under another thread's decode
        return _release_dynamo()


def _release_dynamo() -> tuple[str, ...]:
    from .models import HOLDER

    released = []
    session = getattr(sys.modules.get(f"{__package__}.session"), "SESSION", None)
    if session is not None and session.close_engine("fast"):
        released.append("fast decode path (its compiled step, cache and graphs)")
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
        released.append("torch._dynamo")
    model = getattr(HOLDER.loaded, "model", None)
    if model is not None and "_compiled_call" in vars(model):
        delattr(model, "_compiled_call")
        released.append("model._compiled_call")
    return tuple(released)


def release_cycles(variables: Mapping[str, Any] | None = None, force: str = "") -> tuple[str, ...]:
    """One garbage collection, after the references above are gone: frees reference cycles
    that hold tensors. Incremental (objects new since the last cleanup) unless `force` gives a
    reason to scan all or one of incremental_gc's rules asks for it; `variables` lets it
    notice deleted or rebound names."""
    found = COLLECTOR.collect(variables, force).found
    return (f"{found} unreachable objects",) if found else ()


def release_allocator_caches() -> tuple[str, ...]:
    """Return cached memory: torch's CUDA caching allocator on every device (empty_cache,
    ipc_collect) with the peak counters reset so the next report is per cell, and the C heap's
    free pages to the OS (glibc malloc_trim) so freed CPU tensors show in RSS."""
    released = []
    torch = imported_torch()
    if torch is not None and cuda_in_use():
        for index in range(torch.cuda.device_count()):
            if torch.cuda.memory_reserved(index) > 0:
                torch.cuda.synchronize(index)
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
        released.append("torch CUDA cache")
    if trim_host_heap():
        released.append("host heap")
    return tuple(released)


def release_heap_slack() -> tuple[str, ...]:
    """Hand back what the C heap kept of memory freed before this cleanup (after generation,
    an unload, a `del`): measured by the cleanup like any action, so an RSS drop it causes is
    reported, not taken before the "before" snapshot and missed."""
    return ("free heap pages",) if trim_host_heap() else ()
