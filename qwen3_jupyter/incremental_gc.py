"""Incremental cycle collection for cleanups: what survives a cleanup is frozen (`gc.freeze`),
so the next cleanup's `gc.collect()` scans only the objects created since.

Why: a full collection costs ~0.2 µs per tracked object, and a kernel with torch, transformers,
a loaded model and a data scientist's data holds over a million of them — 300 ms per cleanup,
too slow to run after every cell. The garbage a cell leaves (its outputs, its exception's
frames, its cycles) is new.

A new-objects-only pass misses one thing: a cycle that was alive at the last cleanup and has
become garbage since. So a cleanup collects everything instead when
- it is asked to (`full=True`, `%qwen3_clean --full`), or it is the first one;
- a user variable that existed at the last cleanup was deleted or rebound and its old value is
  still alive, or cannot be weak-referenced (a list, a dict) and could reach a cycle when that
  cleanup saw it (it may be a cycle nothing reaches any more, or hold one);
- the heap has grown by a quarter since the last full pass (CPython's own rule for when a full
  collection is due, in heap blocks), which bounds what a missed cycle can hold on to;
- the memory frozen since the last full pass (process RSS plus CUDA tensor bytes at the last
  freeze, minus the same after the last full pass) reached MEMORY_GROWTH: a tensor's storage is
  not in pymalloc blocks, so a 256 MiB tensor in a cycle would otherwise stay frozen for good
  once the cycle becomes garbage (`holder.clear()`). One full pass per such step: it either
  frees the memory or finds it alive and moves the baseline up;
- FULL_EVERY incremental passes ran since the last full one, which bounds how long any missed
  cycle waits.

The freeze is invisible outside cleanups: while it holds, `gc.collect()` (full),
`gc.get_objects()` and `gc.get_referrers()` first hand the frozen objects back, so
`del model; gc.collect()` and the find-every-tensor recipe behave as they do without us, and
Python's own automatic full collection gets them back whenever its rule says one is due.
Unloading the extension restores all of it. `QWEN3_JUPYTER_INCREMENTAL_GC=0` turns it off.
"""

from __future__ import annotations

import functools
import gc
import subprocess
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from .env_switches import switch

ENV_SWITCH = "QWEN3_JUPYTER_INCREMENTAL_GC"
GROWTH_FRACTION = 4
"""A full pass is due when the heap grew by 1/GROWTH_FRACTION since the last one. Measured in
pymalloc blocks (`sys.getallocatedblocks()`, well under a millisecond): counting the frozen
objects instead (`gc.get_freeze_count()`) walks them all, ~40 ms per million."""
MEMORY_GROWTH = 128 * 1024 * 1024
"""A full pass is due when the survivors frozen since the last full pass came with this much
more process memory (RSS plus CUDA tensor bytes): big enough that a cell making ordinary
arrays does not pay ~200 ms per cleanup, small next to what a stranded model layer holds."""
FULL_EVERY = 50
"""A full pass is due after this many incremental ones: bounds how long a small stranded
cycle (one no other rule notices) waits, at ~4 ms per cleanup on average."""

_WRAPPED = ("collect", "get_objects", "get_referrers")
_ORIGINAL: dict[str, Any] = {
    name: getattr(getattr(gc, name), "__wrapped__", getattr(gc, name)) for name in _WRAPPED
}
_MISSING = object()


@dataclass(frozen=True)
class GcPass:
    """One collection a cleanup ran: full or new-objects-only, why, and what it found."""

    full: bool
    reason: str
    found: int
    scanned: int | None
    seconds: float

    def describe(self) -> str:
        """'gc of 2,130 new objects' or 'full gc (first cleanup)'."""
        if self.full:
            return f"full gc ({self.reason})" if self.reason else "full gc"
        return f"gc of {self.scanned or 0:,} new objects"


def enabled() -> bool:
    """False when the environment switches incremental collection off."""
    return switch(ENV_SWITCH, default=True)


FROZEN_ELSEWHERE = "objects were frozen outside this extension (gc.freeze): they stay frozen"
"""Why every pass is full while someone else's frozen objects are in the permanent generation."""

RESEND_AFTER_S = 0.02
"""How long after an interrupt that landed in the gc callback it is sent again."""


class IncrementalCollector:
    """The freeze, the rules for a full pass, and the gc hooks that keep the freeze invisible."""

    def __init__(self) -> None:
        self.last: GcPass | None = None
        self.frozen = False
        """Whether survivors of the last cleanup are frozen now (our own flag: asking gc,
        `gc.get_freeze_count()`, walks the whole frozen list, ~40 ms per million objects)."""
        self._blocks_at_full = 0
        self._memory_at_full = 0
        self._memory_at_freeze = 0
        self._since_full = 0
        self._why_full = "first cleanup"
        self._variables: dict[str, Remembered] = {}
        self._collecting = False
        self._installed = False
        self._interrupt_caught = False
        self._previous_unraisablehook: Callable[[Any], Any] | None = None

    def collect(self, variables: Mapping[str, Any] | None = None, force: str = "") -> GcPass:
        """Collect cycles among new objects (or everything, when `force` gives a reason or a
        rule says so), then freeze the survivors. `variables`: the user's names, to notice
        deleted or rebound ones."""
        started = time.perf_counter()
        incremental = enabled()
        # Objects someone else froze (the user's own gc.freeze()): gc.unfreeze() cannot tell
        # theirs from ours, so handing ours back would thaw theirs. Every pass is full then.
        # Python 3.12 freezes some of its own at startup: those are not someone else's.
        theirs = (
            incremental and not self.frozen and gc.get_freeze_count() > frozen_by_python_itself()
        )
        if theirs:
            incremental = False
        switched_off = FROZEN_ELSEWHERE if theirs else f"{ENV_SWITCH}=0"
        why = self.full_reason(variables, force) if incremental else switched_off
        if why:
            self.hand_back(why)
        self._collecting = True
        try:
            found = int(_ORIGINAL["collect"]())
        finally:
            self._collecting = False
        scanned = None
        if not incremental:
            self._why_full = FROZEN_ELSEWHERE if theirs else "incremental gc was switched off"
        else:
            if not why:  # what this pass kept: all that is not frozen yet (a short list)
                scanned = len(_ORIGINAL["get_objects"]()) + found
            gc.freeze()
            self._install()
            self.frozen = True
            self._memory_at_freeze = memory_in_use()
            if why:
                self._blocks_at_full = sys.getallocatedblocks()
                self._memory_at_full = self._memory_at_freeze
                self._since_full = 0
            else:
                self._since_full += 1
            self._why_full = ""
            self._variables = _remember(variables or {}, self._variables)
        self.last = GcPass(bool(why), why, found, scanned, time.perf_counter() - started)
        return self.last

    def full_reason(self, variables: Mapping[str, Any] | None, force: str = "") -> str:
        """Why the next pass must scan everything ('' when new objects are enough)."""
        if force:
            return force
        if not self.frozen:
            return self._why_full or "the frozen objects were handed back"
        if self._heap_grew():
            return "the heap grew by a quarter since the last full gc"
        if self._memory_grew():
            grown = (self._memory_at_freeze - self._memory_at_full) // (1024 * 1024)
            return f"{grown} MiB more memory was frozen since the last full gc"
        if self._since_full >= FULL_EVERY:
            return f"{self._since_full} incremental passes since the last full gc"
        if variables is not None:
            for name, seen in self._variables.items():
                value = variables.get(name, _MISSING)
                if (
                    value is not _MISSING
                    and id(value) == seen.identity
                    and type(value) is seen.kind
                ):
                    continue
                if seen.ref is not None and seen.ref() is None:
                    continue  # its old value is gone already: freed by reference counting
                if seen.ref is None and not seen.may_hold_a_cycle:
                    continue  # freed by reference counting, or still held: no garbage either way
                change = "deleted" if value is _MISSING else "rebound"
                return f"`{name}` was {change}; its old value may be a stranded cycle"
        return ""

    def hand_back(self, reason: str) -> None:
        """Unfreeze what the last cleanup froze; the next cleanup will scan everything."""
        if self.frozen:
            self.frozen = False
            self._why_full = reason
            gc.unfreeze()

    def uninstall(self) -> None:
        """Hand everything back and restore the gc module's functions and callbacks."""
        self.hand_back("extension unloaded")
        self._why_full = "first cleanup"
        self._variables = {}
        for name in _WRAPPED:
            if getattr(getattr(gc, name), "__wrapped__", None) is _ORIGINAL[name]:
                setattr(gc, name, _ORIGINAL[name])
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if sys.unraisablehook == self._on_unraisable and self._previous_unraisablehook:
            sys.unraisablehook = self._previous_unraisablehook
        self._previous_unraisablehook = None
        self._installed = False

    def _install(self) -> None:
        if self._installed:
            return
        self._installed = True
        gc.collect = _wrap("collect", _collect)
        gc.get_objects = _wrap("get_objects", _get_objects)
        gc.get_referrers = _wrap("get_referrers", _get_referrers)
        gc.callbacks.append(self._on_gc)
        self._previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable
        from . import lifecycle

        lifecycle.on_unload("incremental-gc", self.uninstall)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Before one of Python's own full collections: hand the frozen objects back when, by
        Python's rule, a full collection of them is due (the heap grew by a quarter)."""
        if phase == "stop" and self._interrupt_caught:
            self._resend_interrupt()
            return
        if phase != "start" or info.get("generation") != 2 or self._collecting:
            return
        try:
            if self.frozen and (self._heap_grew() or self._memory_grew()):
                self.hand_back("Python's own full collection was due")
        except KeyboardInterrupt:
            # Raised out of a gc callback, Python drops it ("Exception ignored in ... _on_gc")
            # and the user's interrupt is lost. Sent again now it would be raised inside this
            # callback again (pending signals run after any built-in call), and during the
            # collection it would land in a finalizer: it is sent again once the collection is
            # over. (A signal's KeyboardInterrupt only arises on the main thread.)
            if threading.current_thread() is not threading.main_thread():
                raise
            self._interrupt_caught = True

    def _on_unraisable(self, unraisable: Any) -> None:
        """A SIGINT that arrives during a collection raises its KeyboardInterrupt in `_on_gc`
        outside its `try` (at its first instruction on 3.11+, after its first statement on
        3.10): Python prints it as "Exception ignored" and the user's interrupt is lost. It is
        sent again: now, when it was the "stop" call (the collection is over), else once this
        collection stops. Anything else goes on to the hook that was there before."""
        if issubclass(unraisable.exc_type, KeyboardInterrupt) and unraisable.object == self._on_gc:
            if _phase_interrupted(unraisable.exc_traceback) == "start":
                self._interrupt_caught = True
            else:
                self._resend_interrupt()
            return
        previous = self._previous_unraisablehook or sys.__unraisablehook__
        previous(unraisable)

    def _resend_interrupt(self) -> None:
        """Send the interrupt caught in the callback again, from a timer thread, a moment after
        this collection's end (its finalizers have run), so it lands in the code that runs next."""
        self._interrupt_caught = False
        from .interrupts import interrupt_main_thread

        threading.Timer(RESEND_AFTER_S, interrupt_main_thread).start()

    def _heap_grew(self) -> bool:
        grown = sys.getallocatedblocks() - self._blocks_at_full
        return grown > self._blocks_at_full // GROWTH_FRACTION

    def _memory_grew(self) -> bool:
        """Whether the objects frozen since the last full pass came with MEMORY_GROWTH more
        memory (measured at freeze time, so this costs nothing now)."""
        return self._memory_at_freeze - self._memory_at_full >= MEMORY_GROWTH


def _phase_interrupted(traceback: TracebackType | None) -> str:
    """The `phase` argument of the `_on_gc` call the traceback went through: read from its
    frame, since where in the call a pending signal is raised differs between Python versions.
    '' when no such frame is there (then the interrupt is sent again at once: late, never lost)."""
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code is IncrementalCollector._on_gc.__code__:
            return str(frame.f_locals.get("phase", ""))
        traceback = traceback.tb_next
    return ""


@functools.cache
def frozen_by_python_itself() -> int:
    """How many objects this Python keeps in the permanent generation itself, read once from
    a fresh interpreter (~20 ms; 0 where none can run). Python 3.12 keeps its immortal ones
    there, 375 tuples (static types' MROs), at startup and again after every full collection:
    counted as a user's gc.freeze(), they made every cleanup a full one on 3.12 (~0.3 s with
    torch loaded, after every cell with autoclean). A user's freeze takes every tracked
    object, thousands at the least, so it still shows. Only asked on 3.12 (3.11 and 3.13 keep
    none there), and only of an interpreter named python: embedded in an application (Blender,
    say), `sys.executable` is the application."""
    executable = Path(sys.executable or "").name
    if sys.version_info[:2] != (3, 12) or not executable.startswith("python"):
        return 0
    try:
        ran = subprocess.run(
            [sys.executable, "-I", "-S", "-c", "import gc; print(gc.get_freeze_count())"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return int(ran.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0


def memory_in_use() -> int:
    """Process RSS plus CUDA tensor bytes (where CUDA is in use): what a stranded cycle's
    tensors show up in, unlike pymalloc's block count. ~20 µs."""
    from .memory import cuda_in_use, process_rss

    total = process_rss()
    if cuda_in_use():
        torch = sys.modules["torch"]
        total += sum(int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count()))
    return total


def _collect(generation: int = 2) -> int:
    if generation >= 2:
        COLLECTOR.hand_back("gc.collect() was called")
    return int(_ORIGINAL["collect"](generation))


def _get_objects(generation: int | None = None) -> list[Any]:
    if generation is None or generation >= 2:
        COLLECTOR.hand_back("gc.get_objects() was called")
    result: list[Any] = _ORIGINAL["get_objects"](generation=generation)
    return result


def _get_referrers(*objects: Any) -> list[Any]:
    COLLECTOR.hand_back("gc.get_referrers() was called")
    result: list[Any] = _ORIGINAL["get_referrers"](*objects)
    return result


def _wrap(name: str, replacement: Any) -> Any:
    """`replacement` dressed as the gc function it stands in for (`__wrapped__` = original)."""
    return functools.wraps(_ORIGINAL[name])(replacement)


OWN_RESULTS = frozenset({"_qwen3"})
"""Names the magics rebind on every call to a result of plain values, which cannot be a
stranded cycle: counting them as rebound made every `%qwen3` turn under `%qwen3_autoclean` a
full gc while the previous result was still referenced (kept in a list, or in `Out`)."""


class Remembered(NamedTuple):
    """What a cleanup noted of a user variable, to judge at the next one whether its old value,
    deleted or rebound since, may have left a stranded cycle behind."""

    identity: int
    kind: type
    ref: weakref.ref[Any] | None
    """A weak reference, where the value takes one (a list or a dict does not)."""
    may_hold_a_cycle: bool = True
    """Without a weak reference: whether a cycle could be reached from it (`_reaches_a_cycle`).
    One that could not is freed by reference counting when its name goes, or is still held."""


CYCLE_SEARCH_BUDGET = 20_000
"""How many references the search for a cycle follows from one value (~2 ms) before it
assumes there may be one: a list of a million numbers is not walked at every cleanup."""


def _never_garbage(value: Any) -> bool:
    """A module, or a class a module holds by its name (`torch.Tensor`, a class defined in a
    cell): the search does not enter them, since a module reaches them, so a cycle through one
    is no garbage (and each reaches most of the program). A class made at run time
    (`type("Cfg", ...)`, `make_dataclass`) may be held by a list alone: it is searched."""
    if isinstance(value, types.ModuleType):
        return True
    if not isinstance(value, type):
        return False
    module = sys.modules.get(getattr(value, "__module__", "") or "")
    return module is not None and getattr(module, value.__name__, None) is value


_UNSEARCHED = (
    types.FunctionType,
    types.MethodType,
    types.FrameType,
    types.TracebackType,
    types.GeneratorType,
    types.CoroutineType,
    types.AsyncGeneratorType,
)
"""What may hold anything (a function's globals and closure, a frame's locals): reaching one,
the search assumes a cycle."""


def _remember(
    variables: Mapping[str, Any], before: Mapping[str, Remembered] | None = None
) -> dict[str, Remembered]:
    """Identity, type and (where possible) a weak reference of each variable that could take
    part in a cycle, to tell at the next cleanup whether a deleted or rebound value is gone.
    A value that takes no weak reference is searched for cycles instead, at every cleanup: one
    whose contents changed (`rows[0] = node`, `d["k"].append(node)`) may hold one now. Only a
    value found to hold one keeps that verdict (`before`: the last cleanup's notes)."""
    remembered: dict[str, Remembered] = {}
    for name, value in variables.items():
        if name in OWN_RESULTS:
            continue
        if not gc.is_tracked(value):
            continue  # atomic (numbers, strings, tuples of them): never part of a cycle
        try:
            remembered[name] = Remembered(id(value), type(value), weakref.ref(value))
            continue
        except TypeError:
            pass
        last = (before or {}).get(name)
        unchanged = last is not None and (last.identity, last.kind) == (id(value), type(value))
        if unchanged and last is not None and last.may_hold_a_cycle:
            remembered[name] = last
        else:
            remembered[name] = Remembered(id(value), type(value), None, _reaches_a_cycle(value))
    return remembered


def _referents_within(value: Any, budget: int) -> list[Any] | None:
    """What the garbage collector sees `value` hold, or None when that is more than `budget`
    (a built-in container's length says so before a million-item list is copied)."""
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > budget:
        return None
    referents = gc.get_referents(value)
    return referents if len(referents) <= budget else None


def _reaches_a_cycle(root: Any) -> bool:
    """Whether a reference cycle may be reachable from `root` (itself in one, or holding one):
    a depth-first search of what the garbage collector sees it hold, which answers True when
    it meets a function, frame or generator or runs out of CYCLE_SEARCH_BUDGET. Why: a list
    rebound by re-running its cell made every cleanup a full gc (0.2-0.45 s), though a list of
    tensors or numbers is freed by reference counting the moment its name goes."""
    budget = CYCLE_SEARCH_BUDGET
    referents = _referents_within(root, budget)
    if referents is None:
        return True
    budget -= len(referents)
    on_path, done = {id(root)}, set()
    path: list[tuple[int, Iterator[Any]]] = [(id(root), iter(referents))]
    while path:
        node, children = path[-1]
        child = next(children, _MISSING)
        if child is _MISSING:
            path.pop()
            on_path.discard(node)
            done.add(node)
            continue
        if isinstance(child, _UNSEARCHED):
            return True
        if not gc.is_tracked(child) or id(child) in done or _never_garbage(child):
            continue
        if id(child) in on_path:
            return True
        referents = _referents_within(child, budget)
        if referents is None:
            return True
        budget -= len(referents)
        on_path.add(id(child))
        path.append((id(child), iter(referents)))
    return False


COLLECTOR = IncrementalCollector()
