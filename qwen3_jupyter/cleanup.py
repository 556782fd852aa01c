"""One release action per memory holder, composed into `cleanup()` and its report.

`gc.collect()` and `torch.cuda.empty_cache()` alone free little in a notebook, because the
memory is still *referenced*: by IPython's output cache (`Out`, `_`, `_N`, the display hook's
own attributes, the last ExecutionResult), by the last exception's traceback frames
(`sys.last_*`, IPython's traceback handler and ExecutionResult), by caches kept on the model.
Each holder has its own small release action here (accelerate's `release_memory` shape); each
returns the names of what it let go and never deletes anything a user could still want by name:
user variables go only when the caller passes them in `drop`, and the loaded model stays.

`cleanup()` runs the actions in order (references first, then one garbage collection — of the
objects created since the last cleanup, or of all when incremental_gc's rules say so — then the
allocator caches, so the freed blocks really go back to the driver or the OS), measures
memory before and after, and never raises: a failing action is recorded in the report and the
others still run. torch is never imported here; if the process has not imported it, it holds no
tensors and the tensor-related work is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import itertools
import logging
import os
import re
import sys
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from .cleanup_report import (
    HOST_NOISE_BYTES,
    ActionResult,
    CleanupReport,
    DeviceChange,
    DeviceMemory,
    Holder,
    drop,
)
from .incremental_gc import COLLECTOR
from .memory import MiB, cuda_in_use, live_tensor_bytes, process_rss, trim_host_heap

_log = logging.getLogger(__name__)

WALK_DEPTH = 4
"""How deep the tensor search descends into containers and plain objects (enough for a
ModelOutput of tensors, a DynamicCache's layers, a dict of lists of tensors)."""

WALK_BUDGET = 10_000
"""The most objects the tensor search visits from one root, so a list of a million numbers in
`Out` costs microseconds, not a walk of the whole list."""

EXACT_BUDGET = 200_000
"""The most objects the exact search visits. It runs only where the bounded one was cut short
(a tensor past the 10,000th element of a list in `Out` must still count), so it is rare."""

GRAPH_BUDGET = 10_000
"""The most autograd nodes one scan visits (a training step's graph has a few thousand)."""

_OUT_NAME = re.compile(r"_\d+")
_IPYTHON_NAMES = re.compile(r"_+|_\d+|_i+|_i\d+|_ih|_oh|_dh|In|Out|exit|quit|get_ipython")
_MODEL_CACHE_ATTRS = ("_cache", "past_key_values", "_past_key_values", "_kv_cache")


# ----------------------------------------------------------------------------- finding tensors


class _TensorScan:
    """Storages of the tensors reachable from some roots, bounded in depth and visits.

    Knows tensors (any device), nn.Modules (their parameters and buffers), objects exposing
    `__cuda_array_interface__` (CuPy, Numba), and descends dicts (ModelOutput is one), lists,
    tuples, sets and plain objects' attributes. Functions, classes and modules are not entered:
    they reach everything.
    """

    def __init__(self, torch: Any, stop_at_first: bool = False) -> None:
        self.torch = torch
        self.stop_at_first = stop_at_first
        self.storages: dict[tuple[str, int], int] = {}
        self.tensor_count = 0
        self._seen: set[int] = set()
        self._counted: set[int] = set()
        self._budget = WALK_BUDGET
        self.truncated = False
        """The bounded walk left something unvisited (budget or depth): only `visit_all` is sure."""
        self.stopped = False
        """Even `visit_all` ran out of budget: tensors may lie past where it stopped."""
        self._nodes: set[int] = set()
        self._graph_budget = GRAPH_BUDGET

    @property
    def found(self) -> bool:
        return bool(self.storages)

    def nbytes(self) -> int:
        return sum(self.storages.values())

    def by_device(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for (device, _), size in self.storages.items():
            totals[device] = totals.get(device, 0) + size
        return totals

    def _done(self) -> bool:
        return self.stop_at_first and bool(self.storages)

    def visit(self, obj: Any, depth: int = 0) -> None:
        if self._done():
            return
        if self._budget <= 0:
            self.truncated = True
            return
        self._budget -= 1
        if obj is None or isinstance(obj, (str, bytes, int, float, complex, bool)):
            return
        key = id(obj)
        if key in self._seen or type(obj) in _PROXIES:
            return
        self._seen.add(key)
        if self._take(obj) or isinstance(obj, _OPAQUE):
            return
        if depth >= WALK_DEPTH:
            self.truncated = self.truncated or gc.is_tracked(obj)
            return
        if isinstance(obj, dict):
            children: Iterable[Any] = list(itertools.islice(obj.values(), self._budget))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = list(itertools.islice(obj, self._budget))
        elif isinstance(obj, BaseException):
            children = [obj.__traceback__, obj.__cause__, obj.__context__, *_exception_data(obj)]
        elif isinstance(obj, types.TracebackType):
            children = _traceback_locals(obj)
        else:
            inside = _contents(obj)
            if inside is None:  # a C object vars() cannot open: only the exact walk sees in
                self.truncated = self.truncated or gc.is_tracked(obj)
                return
            children = inside
        for child in children:
            self.visit(child, depth + 1)
            if self._done():
                return
            if self._budget <= 0:
                self.truncated = True
                return

    def visit_all(self, root: Any) -> None:
        """Every tensor reachable from `root` through the garbage collector's references, at
        any depth (up to EXACT_BUDGET objects): the exact answer where `visit` was cut short.
        Functions, classes and modules other than `root` are not entered, as in `visit`."""
        seen = {id(root)}
        stack = [root]
        budget = EXACT_BUDGET
        while stack and not self._done():
            budget -= 1
            if budget < 0:
                self.stopped = True
                return
            obj = stack.pop()
            if type(obj) in _PROXIES:
                continue
            if self._take(obj) or (obj is not root and isinstance(obj, _OPAQUE)):
                continue
            for child in [*filter(gc.is_tracked, _referents(obj)), *_untracked(obj)]:
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append(child)

    def _take(self, obj: Any) -> bool:
        """Record `obj` if it is a tensor, a module's weights or a CUDA array (not entered)."""
        torch = self.torch
        if isinstance(obj, torch.Tensor):
            self._add_tensor(obj)
        elif isinstance(obj, torch.nn.Module):
            for tensor in (*obj.parameters(), *obj.buffers()):
                self._add_tensor(tensor)
        elif _cuda_array(obj):
            self.storages[("cuda", id(obj))] = int(getattr(obj, "nbytes", 0) or 0)
        else:
            return False
        return True

    def _add_tensor(self, tensor: Any) -> None:
        if id(tensor) in self._counted:
            return
        self._counted.add(id(tensor))
        self._add_storage(tensor)
        grad_fn = getattr(tensor, "grad_fn", None)
        if grad_fn is not None and not self.stop_at_first:  # a yes/no question needs no graph
            self._add_graph(grad_fn)

    def _add_storage(self, tensor: Any) -> None:
        try:
            if tensor.is_meta:
                return
            storage = tensor.untyped_storage()
            self.storages[(str(tensor.device), int(storage.data_ptr()))] = int(storage.nbytes())
            self.tensor_count += 1
        except Exception:  # sparse, nested, functorch wrappers: no plain storage
            return

    def _add_graph(self, root: Any) -> None:
        """The leaf variables an autograd graph keeps: no name holds them any more, so only
        the graph reaches them (`loss = (w * 2).exp().sum(); del w` keeps w through `loss`; it
        keeps exp's result too, which is counted nowhere: see `_saved_tensors`)."""
        stack = [root]
        while stack and self._graph_budget > 0:
            node = stack.pop()
            if node is None or id(node) in self._nodes:
                continue
            self._nodes.add(id(node))
            self._graph_budget -= 1
            for tensor in _saved_tensors(node):
                self._add_storage(tensor)
            stack.extend(child for child, _ in getattr(node, "next_functions", ()))


_OPAQUE = (type, types.ModuleType, types.FunctionType)
_PROXIES = (weakref.ProxyType, weakref.CallableProxyType)
"""Weak proxies hold nothing, and a dead one raises ReferenceError at any isinstance()."""


def _contents(obj: Any) -> list[Any] | None:
    """What a non-container object holds, as far as Python can tell cheaply: a bound method's
    `__self__` (`t.sum` shown by mistake), a partial's function and arguments, a suspended
    generator's or coroutine's locals, a numpy array's base (`t.numpy()`), attributes in
    `__dict__` and `__slots__`. None: a C object whose contents only gc.get_referents sees."""
    if isinstance(obj, _SPECIAL):
        return _special_contents(obj)
    slots = _slot_names(type(obj))
    values = [getattr(obj, name, None) for name in slots]
    try:
        return [*vars(obj).values(), *values]
    except TypeError:
        found = _untracked(obj)
        return [*values, *found] if slots or found or _slotted(type(obj)) else None


_SPECIAL = (
    types.MethodType,
    types.BuiltinFunctionType,
    functools.partial,
    types.GeneratorType,
    types.CoroutineType,
    types.AsyncGeneratorType,
)


def _special_contents(obj: Any) -> list[Any] | None:
    """`_contents` of the objects whose references are not attributes (see _SPECIAL), and of a
    numpy array (its base)."""
    if isinstance(obj, (types.MethodType, types.BuiltinFunctionType)):
        owner = getattr(obj, "__self__", None)
        return [] if owner is None or isinstance(owner, _OPAQUE) else [owner]
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values(), *vars(obj).values()]
    # What the collector sees of a suspended generator or coroutine is its frame's locals.
    # Not `frame.f_locals`: before Python 3.13 reading it copies the locals into a dict that
    # stays on the frame, so a tensor the generator later deleted stayed alive.
    return list(gc.get_referents(obj))


def _untracked(obj: Any) -> list[Any]:
    """References the garbage collector does not report: a numpy array's `base` (ndarray has
    no gc support, so neither walk would reach the tensor a `t.numpy()` view keeps)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.ndarray) and obj.base is not None:
        return [obj.base]
    return []


def _slotted(cls: type) -> bool:
    return any("__slots__" in vars(c) for c in cls.__mro__[:-1])


def _slot_names(cls: type) -> tuple[str, ...]:
    """The `__slots__` attribute names of `cls` and its bases (mangled), once per type."""
    names = _SLOT_NAMES.get(cls)
    if names is None:
        found = []
        for c in cls.__mro__[:-1]:
            slots = vars(c).get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name in ("__dict__", "__weakref__"):
                    continue
                if name.startswith("__") and not name.endswith("__"):
                    name = f"_{c.__name__.lstrip('_')}{name}"
                found.append(name)
        names = _SLOT_NAMES[cls] = tuple(found)
    return names


_SLOT_NAMES: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()
"""Weak: a class redefined in a later cell (and what its attributes hold) must not stay."""


def _saved_tensors(node: Any) -> list[Any]:
    """The tensors one autograd node keeps that can be read without running anything: the
    leaf `variable` of an AccumulateGrad. Not the `_saved_*` values: reading one unpacks it,
    which runs its saved-tensor hooks (torch.utils.checkpoint runs the forward again,
    `save_on_cpu` copies back to the GPU), so the graph's figure is a floor."""
    if type(node).__name__ != "AccumulateGrad":
        return []
    variable = getattr(node, "variable", None)
    return [variable] if _is_tensor(variable) else []


def _is_tensor(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


def _exception_data(exc: BaseException) -> list[Any]:
    """What an exception carries besides its traceback: its args and attributes."""
    return [*exc.args, *getattr(exc, "__dict__", {}).values()]


def _cuda_array(obj: Any) -> bool:
    try:
        return hasattr(type(obj), "__cuda_array_interface__")
    except Exception:
        return False


def _referents(obj: Any) -> list[Any]:
    """What `obj` references, except a module frame's globals (the user's namespace, not the
    frame's to hold: only function frames' locals count, as in `_traceback_locals`)."""
    if isinstance(obj, types.FrameType):
        return list(obj.f_locals.values()) if obj.f_code.co_flags & inspect.CO_OPTIMIZED else []
    return gc.get_referents(obj)


def _traceback_locals(tb: types.TracebackType | None) -> list[Any]:
    """Values of the locals of every function frame in a traceback (not module frames: those
    are the user's namespace, which is not the traceback's to hold)."""
    values: list[Any] = []
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            values.extend(frame.f_locals.values())
        tb = tb.tb_next
    return values


def _torch() -> Any | None:
    return sys.modules.get("torch")


def holds_device_memory(obj: Any) -> bool:
    """True when `obj` is or holds (within WALK_DEPTH) a tensor, a module with weights, or a
    CUDA array. Cheap: stops at the first one found and visits at most WALK_BUDGET objects,
    unless that walk was cut short: then an exact walk decides, once per object (see
    `_WALKED_EMPTY`). An exact walk that ran out of budget keeps the object: a cleanup only
    deletes what it knows holds memory (a big table in `Out` is the user's result too)."""
    torch = _torch()
    if torch is None:
        return False
    scan = _TensorScan(torch, stop_at_first=True)
    scan.visit(obj)
    if scan.found or not scan.truncated:
        return scan.found
    if _WALKED_EMPTY.get(id(obj)) == _size(obj):
        return False
    scan.visit_all(obj)
    if not scan.found and not scan.stopped:
        if len(_WALKED_EMPTY) > 1000:
            _WALKED_EMPTY.clear()
        _WALKED_EMPTY[id(obj)] = _size(obj)
    return scan.found


_WALKED_EMPTY: dict[int, int] = {}
"""Objects an exact walk found no tensor in, by id, with their size then. Why: an entry kept in
`Out` (a long list) would otherwise be walked again at every cleanup, which autoclean runs
after every cell (0.9 s for 300,000 small dicts). An output kept in `Out` keeps its id; the
cheap walk still runs each time, so a tensor added within its reach is found."""


def _size(obj: Any) -> int:
    try:
        return len(obj)
    except TypeError:
        return -1


# ----------------------------------------------------------------------------- release actions


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
            verdicts[id(value)] = holds_device_memory(value)
        return verdicts[id(value)]

    ns = shell.user_ns
    hidden = getattr(shell, "user_ns_hidden", {})
    caches: list[dict[Any, Any]] = []
    history = getattr(shell, "history_manager", None)
    for candidate in (getattr(history, "output_hist", None), ns.get("_oh"), ns.get("Out")):
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
    for label, result in _execution_results(shell):
        value = getattr(result, "result", None)
        if value is not None and (id(value) in purged or holds(value)):
            result.result = None
            released.append(f"{label}.result")
    kept_alive.clear()
    return tuple(released)


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


def release_last_exception(shell: Any | None) -> tuple[str, ...]:
    """Let go of the last exception's traceback, whose frames keep every local tensor alive.

    Drops `sys.last_type/value/traceback` (and `sys.last_exc` on 3.12+), IPython's traceback
    handler's `tb` and debugger frames, and strips `__traceback__` from the exceptions that the
    ExecutionResults keep. The exception objects themselves stay where IPython and ipykernel
    read them (a failed cell still reports its error); only their frames go, so `%debug` has
    nothing to inspect afterwards.
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
    if shell is not None:
        handler: Any = getattr(shell, "InteractiveTB", None)
        if getattr(handler, "tb", None) is not None:
            handler.tb = None
            released.append("InteractiveTB.tb")
        debugger = getattr(handler, "pdb", None)
        if debugger is not None and getattr(debugger, "botframe", None) is not None:
            with contextlib.suppress(Exception):
                debugger.forget()
            debugger.reset()
            released.append("debugger frames")
        for label, name, value in _kept_exceptions(shell):
            exceptions.append(value)
            if value.__traceback__ is not None:
                released.append(f"{label}.{name}.__traceback__")
            released.extend(f"{label}.{name}.{part}" for part in _release_contents(value))
    current = sys.exc_info()[1]
    for exc in _exception_chain(exceptions):
        if exc is not current:
            exc.__traceback__ = None
            _release_contents(exc)
    return tuple(released)


def _kept_exceptions(shell: Any) -> list[tuple[str, str, BaseException]]:
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
    torch = _torch()
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
    torch = _torch()
    if torch is not None and cuda_in_use():
        for index in range(torch.cuda.device_count()):
            if torch.cuda.memory_reserved(index) > 0:
                torch.cuda.synchronize(index)
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
        released.append("torch CUDA cache")
    if _malloc_trim():
        released.append("host heap")
    return tuple(released)


_malloc_trim = trim_host_heap


def _release_heap_slack() -> tuple[str, ...]:
    """Hand back what the C heap kept of memory freed before this cleanup (after generation,
    an unload, a `del`): measured by the cleanup like any action, so an RSS drop it causes is
    reported, not taken before the "before" snapshot and missed."""
    return ("free heap pages",) if _malloc_trim() else ()


# ----------------------------------------------------------------------------- measuring


@dataclass
class _Nvml:
    """One NVML reader for cleanup reports, opened on first use when CUDA is in use."""

    reader: Any = None
    failed: bool = False

    def process_memory(self) -> dict[str, int | None]:
        """Bytes this process uses per torch CUDA device ('cuda:0'), None where unknown."""
        if self.failed:
            return {}
        try:
            from . import memory

            if self.reader is None:
                self.reader = memory.NvmlReader()
            self.reader.open()
            if not self.reader.opened:
                self.failed = True
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
            self.failed = True
            return {}

    def close(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()
        self.reader = None
        self.failed = False


_NVML = _Nvml()


def shutdown_nvml() -> None:
    """Close the NVML handle cleanup reports opened (called when the extension unloads)."""
    _NVML.close()


def _probe() -> tuple[int, dict[int, tuple[int, int]]]:
    """The cheap counters (host RSS; torch allocated and reserved per CUDA device)."""
    cuda: dict[int, tuple[int, int]] = {}
    torch = _torch()
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
    torch = _torch()
    cpu_tensors = None
    totals = None
    rss = process_rss()  # first: counting tensors leaves heap slack of its own behind
    if count_tensors:
        totals = live_tensor_bytes() if torch is not None else {}
        cpu_tensors = totals.get("cpu", 0)
        _malloc_trim()  # or the next cleanup reports the count's garbage as heap it returned
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


# ----------------------------------------------------------------------------- holders


def find_holders(
    shell: Any | None, limit: int = 10, totals: dict[str, int] | None = None
) -> tuple[Holder, ...]:
    """The biggest things that still hold tensor memory, by name, biggest first.

    User variables (and what the user's functions and classes keep inside: closures,
    defaults, lru_cache contents, class attributes), output-cache entries, the last traceback,
    the loaded model; whatever live tensor memory none of them reaches is reported as one
    "other" line (module globals, C extensions).
    """
    from .models import HOLDER

    torch = _torch()
    if torch is None:
        return ()
    holders: list[Holder] = []
    reached: dict[tuple[str, int], int] = {}
    stopped: list[str] = []

    def add(name: str, kind: str, obj: Any, hint: str, scan: _TensorScan | None = None) -> None:
        if scan is None:
            scan = _TensorScan(torch)
            scan.visit(obj)
        if scan.truncated:
            scan.visit_all(obj)
        if scan.stopped:
            stopped.append(name)
        if not scan.found:
            return
        reached.update(scan.storages)
        devices = tuple(sorted(scan.by_device()))
        holders.append(Holder(name, kind, _describe(obj, scan), scan.nbytes(), devices, hint))

    if shell is not None:
        for name, value in user_variables(shell).items():
            if isinstance(value, types.ModuleType):
                continue
            inside = _inner_holdings(name, value)
            for inner_name, obj, hint in inside:
                add(inner_name, "variable", obj, hint)
            if not inside:
                add(name, "variable", value, _variable_hint(name, value))
        out = getattr(getattr(shell, "history_manager", None), "output_hist", None) or {}
        for key, value in list(out.items()):
            add(f"Out[{key}]", "output", value, "%qwen3_clean")
    last_tb = getattr(sys, "last_traceback", None)
    if last_tb is not None:
        scan = _TensorScan(torch)
        for value in _traceback_locals(last_tb):
            scan.visit(value, 1)
        add("last traceback", "traceback", last_tb, "%qwen3_clean", scan)
    for exc in _exceptions_in_sight(shell):
        scan = _TensorScan(torch)
        for value in _exception_data(exc):
            scan.visit(value, 1)
        add("last exception (args)", "exception", exc, "%qwen3_clean", scan)
    loaded = HOLDER.loaded
    if loaded is not None and loaded.model is not None:
        add(f"model {loaded.name}", "model", loaded.model, "%qwen3 --unload")
    for kept, holding in _kept_holdings():
        add(kept, "kept", holding, "kept for speed: %qwen3 --eager or --unload gives it back")
    total = live_tensor_bytes() if totals is None else totals
    known: dict[str, int] = {}
    for (device, _), size in reached.items():
        known[device] = known.get(device, 0) + size
    other = {d: total[d] - known.get(d, 0) for d in total if total[d] - known.get(d, 0) > 0}
    holders.sort(key=lambda h: h.nbytes, reverse=True)
    result = holders[:limit]
    if sum(other.values()) >= MiB:
        result.append(
            Holder(
                "not reachable from a name",
                "other",
                "tensors",
                sum(other.values()),
                tuple(sorted(other)),
                _other_hint(stopped),
            )
        )
    return tuple(result)


def _exceptions_in_sight(shell: Any | None) -> list[BaseException]:
    """The last exception as IPython and `sys` keep it, each once."""
    found = [value for _, _, value in _kept_exceptions(shell)] if shell is not None else []
    last = getattr(sys, "last_value", None)
    if isinstance(last, BaseException):
        found.append(last)
    return list({id(exc): exc for exc in found}.values())


def _variable_hint(name: str, value: Any) -> str:
    """How to free a variable; a tensor with an autograd graph can also keep just its data."""
    if getattr(value, "grad_fn", None) is not None and _is_tensor(value):
        return f"del {name} or {name} = {name}.detach()"
    return f"del {name}"


def _other_hint(stopped: list[str]) -> str:
    """Where the unattributed tensors may be: past a search that stopped, or out of its sight."""
    if stopped:
        return f"the search stopped inside {', '.join(stopped)}: they may be there"
    return "held by module globals, C code or closures outside the user's namespace"


def _inner_holdings(name: str, value: Any) -> list[tuple[str, Any, str]]:
    """(holder name, contents, hint) for what a user's function or class keeps inside it.

    The scan does not enter functions and classes (everything is reachable from there), so
    their own contents are named here: closure cells, defaults, an lru_cache's results (C:
    only the garbage collector sees them) and the attributes of a class defined in `__main__`.
    Naming only: the cleanup never deletes them.
    """
    if _is_lru_cache(value):
        contents = [o for o in gc.get_referents(value) if _cached_result(value, o)]
        return [(f"{name} (lru_cache)", contents, f"{name}.cache_clear() frees it")]
    if isinstance(value, types.FunctionType):
        found: list[tuple[str, Any, str]] = []
        cells = [cell.cell_contents for cell in value.__closure__ or () if _filled(cell)]
        if cells:
            found.append((f"{name} (closure)", _one_or_all(cells), f"del {name}"))
        defaults = [*(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values()]
        if defaults:
            found.append((f"{name} (defaults)", _one_or_all(defaults), f"del {name}"))
        return found
    if isinstance(value, type) and value.__module__ == "__main__":
        return [
            (f"{name}.{attr}", item, f"del {name}.{attr}")
            for attr, item in vars(value).items()
            if not (attr.startswith("__") and attr.endswith("__"))
        ]
    return []


def definition_holders(name: str, value: Any, hint: str) -> list[Holder]:
    """What a function or class keeps in tensors (closure, defaults, class attributes), one
    Holder each with `hint`: `--drop` keeps definitions (the next cell may call them), so it
    names the ones that hold memory instead of keeping them silently."""
    torch = _torch()
    if torch is None:
        return []
    found = []
    for inner, obj, _ in _inner_holdings(name, value):
        scan = _TensorScan(torch)
        scan.visit(obj)
        if scan.truncated:
            scan.visit_all(obj)
        if scan.found:
            devices = tuple(sorted(scan.by_device()))
            found.append(Holder(inner, "definition", "", scan.nbytes(), devices, hint))
    return found


def _is_lru_cache(value: Any) -> bool:
    return all(callable(getattr(value, a, None)) for a in ("cache_clear", "cache_info")) and (
        hasattr(value, "__wrapped__")
    )


def _cached_result(wrapper: Any, obj: Any) -> bool:
    """A referent of an lru_cache wrapper that is its cache (keys, results), not its own
    machinery (its type, wrapped function, `__dict__`)."""
    return (
        not isinstance(obj, type)
        and obj is not wrapper.__wrapped__
        and (obj is not getattr(wrapper, "__dict__", None))
    )


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _one_or_all(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else tuple(items)


def _kept_holdings() -> list[tuple[str, Any]]:
    """(name, object) for what the session's engines keep on purpose (the fast path's cache)."""
    session = sys.modules.get(f"{__package__}.session")
    engines = getattr(getattr(session, "SESSION", None), "engines", {})
    found = []
    for key, engine in list(engines.items()):
        holdings = engine.holdings()
        if holdings:
            found.append((f"{engine.kind} engine ({key}) decode cache", holdings))
    return found


def kept_memory_text() -> tuple[str, ...]:
    """What the session's engines keep between calls on purpose, one phrase each."""
    session = sys.modules.get(f"{__package__}.session")
    keeper = getattr(session, "SESSION", None)
    if keeper is None:
        return ()
    return tuple(k.describe() for k in keeper.kept_memory())


def user_variables(shell: Any) -> dict[str, Any]:
    """The user's own names: the namespace without IPython's (`In`, `Out`, `_N`, `_i`, ...)."""
    hidden = getattr(shell, "user_ns_hidden", {})
    return {
        name: value
        for name, value in list(shell.user_ns.items())
        if not _IPYTHON_NAMES.fullmatch(name) and not (name in hidden and hidden[name] is value)
    }


def _describe(obj: Any, scan: _TensorScan) -> str:
    torch = scan.torch
    if isinstance(obj, torch.Tensor):
        graph = " + autograd graph" if obj.grad_fn is not None and scan._nodes else ""
        return f"Tensor{list(obj.shape)} {str(obj.dtype).removeprefix('torch.')}{graph}"
    if isinstance(obj, types.TracebackType):
        return f"frames holding {scan.tensor_count} tensors"
    count = f"{scan.tensor_count} tensor{'s' if scan.tensor_count != 1 else ''}"
    return f"{type(obj).__name__} ({count})"


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


def cleanup(
    shell: Any | None = None,
    *,
    drop: Iterable[str] | str = (),
    dynamo: bool = False,
    verbose: bool = False,
    count_tensors: bool | None = None,
    full: bool = False,
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
    that names no variables is refused first); never unloads the model.
    """
    names = _drop_names(drop)
    from .generation import check_arguments  # `verbose="no"` is truthy: it meant yes

    switches: dict[str, object] = {"dynamo": dynamo, "verbose": verbose, "full": full}
    if count_tensors is not None:
        switches["count_tensors"] = count_tensors
    check_arguments(flags=switches)
    started = time.perf_counter()
    count = verbose if count_tensors is None else count_tensors
    COLLECTOR.last = None
    try:
        if shell is None:
            shell = _current_shell()
        start = _probe()  # before counting tensors: the count's own garbage is not slack
        before, _ = _snapshot(count)
        heap = _run_action("host heap", _release_heap_slack, start)
        actions = (heap, *_run_actions(shell, names, dynamo, _full_gc_reason(full, dynamo, count)))
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
        )
    except Exception as exc:  # never into the user's cell
        _log.exception("qwen3_jupyter cleanup failed")
        report = CleanupReport((), (), (), time.perf_counter() - started, _one_line(exc))
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


def _run_actions(
    shell: Any | None, drop: tuple[str, ...], dynamo: bool, full_gc_reason: str
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
                user_variables(shell) if shell is not None else None, full_gc_reason
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
    _malloc_trim()  # so host memory this action freed shows in RSS now, attributed to it
    seconds = time.perf_counter() - started
    return ActionResult(name, released, _probe_drop(probe, _probe()), seconds, error)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
