"""Kernel interrupts (SIGINT): held across a few lines that must run together, or made to land.

An interrupt lands between any two Python bytecodes. Where a half-done step would lose or corrupt
something (a batch written to the JSON-lines file but not kept; a CUDA graph half captured), the
interrupt is held until the block has run and delivered right after (`interrupt_deferred`).
Where Python may drop it (a long torch.compile), it is sent again until it lands
(`interrupts_that_land`).
"""

from __future__ import annotations

import _thread
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Hold a kernel interrupt (SIGINT) until the block has run, then deliver it.

    Only on the main thread (signal handlers can be set nowhere else); elsewhere the block
    simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, _restorable(previous))
    if not received or previous is signal.SIG_IGN:
        return
    if callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    else:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_caught() -> Iterator[list[int]]:
    """Record a kernel interrupt during the block instead of raising it (the list yielded is
    not empty when one came): for the wrap-up of a call whose work is done, where an interrupt
    is the stop it always is, but raised there it lost what the call had finished (a batch's
    results, as its progress line was cleared). Only on the main thread; elsewhere the block
    simply runs."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, _restorable(previous))


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ignore kernel interrupts (SIGINT) while the block runs: for the short work that finishes
    a stop already under way, where a second press of the stop button must not cut it short
    and lose what the first one kept. Only on the main thread; elsewhere the block simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, _restorable(previous))


@contextlib.contextmanager
def children_spared() -> Iterator[None]:
    """Keep a kernel interrupt from the processes the block starts, while the kernel still
    gets it.

    Why: Jupyter sends an interrupt to the kernel's whole process group, so a C++ compile that
    torch.compile ran from the kernel (g++) died mid-write: the 0-byte `.so` it left in the
    shared compile cache failed that step's compile from then on, in this kernel and the next
    ones (3 of 5 interrupted first compiles on the CPU). SIGINT is blocked in this thread for
    the block: the processes it starts inherit the mask and finish their file, while the
    kernel's other threads take the signal, whose handler Python runs here as always (after
    the child the thread waits on has ended); `interrupt_main_thread` reaches it too. Only on
    the main thread, where the mask exists.
    """
    global _SPARING
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    # Read first, changed inside the try: blocking runs pending handlers, and an interrupt
    # raised there, outside a try, left SIGINT blocked in the main thread for good.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        _SPARING += 1
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        _SPARING -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_SPARING = 0
"""How many `children_spared` blocks the main thread is in (SIGINT blocked there)."""


def interrupt_main_thread() -> None:
    """Interrupt the main thread as the kernel's own interrupt does: a signal to it, which also
    wakes a call it is blocked in; inside `children_spared`, where that signal would wait for
    the block's end, Python's handler is run on the main thread directly."""
    main = threading.main_thread().ident
    if main is None:
        return
    if _SPARING:
        _thread.interrupt_main(signal.SIGINT)
    else:
        signal.pthread_kill(main, signal.SIGINT)


def _restorable(handler: Any) -> Any:
    """`handler`, or Python's own (raise KeyboardInterrupt) where it was set outside Python
    and `signal` reports None: putting back SIG_DFL would make the next interrupt kill the
    kernel."""
    return handler if handler is not None else signal.default_int_handler


def import_whole(*modules: str) -> None:
    """Import `modules` with a kernel interrupt held until they are in, then delivered.

    Why: an interrupt landing inside `import torch` (1.4 s here, the first call's first step)
    leaves torch's operator registrations half made, and every later `import torch` in that
    kernel then fails ("Trying to override a python impl for DispatchKey.Meta on operator
    aten::broadcast_tensors") until a restart and a slow model reload. Waiting out the import
    keeps the kernel usable; the interrupt still ends the cell right after.
    """
    missing = [name for name in modules if name not in sys.modules]
    if missing:
        with interrupt_deferred():
            for name in missing:
                importlib.import_module(name)


def interrupts_that_land() -> contextlib.AbstractContextManager[None]:
    """See `_LandingInterrupts`: an interrupt during the block ends it, even a dropped one."""
    return _LandingInterrupts()


class _LandingInterrupts:
    """Make an interrupt (SIGINT) end the block even where Python would drop it.

    Why: Python raises an interrupt's KeyboardInterrupt at whatever bytecode runs next, and when
    that is a finalizer (`__del__`, a weakref or gc callback) it prints "Exception ignored" and
    the interrupt is gone. torch.compile frees objects all the time while it traces, so an
    interrupt during a compile was lost now and then (measured: the compile went on for 15 s and
    the call decoded every token). Here the first SIGINT is sent again to the main thread every
    0.25 s while the main thread is still inside the block, and a KeyboardInterrupt is raised
    only there; if every one was dropped and the block ends, it raises on the way out. Only on
    the main thread (signal handlers can be set nowhere else); elsewhere the block simply runs.
    """

    RESEND_EVERY = 0.25
    RESEND_AT_MOST = 40

    def __init__(self) -> None:
        self._active = threading.current_thread() is threading.main_thread()
        self._block: Any = None
        self._received = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        """Taken to resend and to finish: no resend once the block is done."""
        self._previous: Any = None
        self._previous_hook: Any = None

    def __enter__(self) -> None:
        if not self._active:
            return
        self._block = sys._getframe(1)
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if not self._active:
            return
        with self._lock:  # (an interrupt in here is ignored: see _inside)
            self._done.set()
        previous = _restorable(self._previous)
        try:
            signal.signal(signal.SIGINT, previous)  # it first runs pending signals' handlers
        except BaseException:  # another signal's handler raised: put ours back all the same
            signal.signal(signal.SIGINT, previous)
            raise
        finally:  # and the unraisable hook, on both paths: ours must not outlive the block
            self._block = None
            sys.unraisablehook = self._previous_hook
        if self._received.is_set() and not isinstance(value, KeyboardInterrupt):
            # Every one was dropped and the block ran to its end, or ended in another error.
            raise KeyboardInterrupt from value

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._done.is_set() or not self._inside(frame or sys._getframe(1)):
            return  # the block is over: this was a resend that came late
        if not self._received.is_set():
            self._received.set()
            threading.Thread(target=self._resend, name="qwen3-interrupt", daemon=True).start()
        raise KeyboardInterrupt

    def _on_unraisable(self, unraisable: Any) -> None:
        """Drop our own interrupt where Python dropped it: it is sent again until it lands, so
        its "Exception ignored in ... KeyboardInterrupt" traceback (printed in the user's cell,
        above the one-line message) said nothing true. Anything else goes to the hook before."""
        if self._received.is_set() and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        self._previous_hook(unraisable)

    def _inside(self, frame: Any) -> bool:
        """Whether `frame` runs in the block (and not in this object's own exit)."""
        while frame is not None:
            if frame.f_code is _EXIT_CODE:
                return False  # leaving the block: raising here would skip putting things back
            if frame is self._block:
                return True
            frame = frame.f_back
        return False

    def _resend(self) -> None:
        main = threading.main_thread().ident
        for _ in range(self.RESEND_AT_MOST):
            if self._done.wait(self.RESEND_EVERY) or main is None:
                return
            with self._lock:
                if self._done.is_set() or not self._inside(sys._current_frames().get(main)):
                    return  # the KeyboardInterrupt got out of the block
                interrupt_main_thread()


_EXIT_CODE = _LandingInterrupts.__exit__.__code__


INTERRUPTED_EARLIER = "a call earlier in this cell was interrupted; run the cell again"
"""Why a call did not start: a bare `KeyboardInterrupt:` said nothing of the earlier call."""

INTERRUPTED_EARLIER_IN_SCRIPT = (
    "a call earlier in this program was interrupted (Ctrl-C; it returned what it finished), so "
    "this one did not start"
)


class CellInterrupts:
    """One interrupt stops every later call of the cell it landed in.

    Why: a call ended by an interrupt returns what it finished (the partial answer, the batches
    done), so a loop of calls in the cell went on with its next call: one press of the stop
    button and the cell ran 28 s more (measured, three calls of a loop). A call ended so is
    noted (`note`); the cell's next call raises KeyboardInterrupt before it starts (`check`);
    the next cell starts clear (IPython's pre_run_cell). Only on the main thread: nowhere else
    is there an interrupt.

    A script (no IPython shell, no interactive prompt) is one cell: its Ctrl-C ended one call
    and the script went on with the next, and exited 0. There the next call raises it, once
    (a script that catches it may go on). So is `ipython script.py`, which has a shell but no
    cells: there every later call raised "earlier in this cell", for good. A plain `python`
    prompt has no cells to scope it to, so there, as before, an interrupt ends only its own
    call; `python -i` and `ipython -i` start their prompt clean.
    """

    def __init__(self) -> None:
        self._interrupted = False
        self._in_a_cell = False
        """The interrupt landed in a cell: every later call of it raises, until the next."""
        self._watched: Any = None
        """The shell whose pre_run_cell clears the mark (registered at the first note)."""

    def note(self, interrupted: bool) -> None:
        """Record whether the call that just returned was ended by an interrupt."""
        if not interrupted or threading.current_thread() is not threading.main_thread():
            return
        shell = _shell()
        self._in_a_cell = _running_a_cell(shell)
        if not self._in_a_cell:  # a script; not the `>>>` prompt
            self._interrupted = shell is not None or not hasattr(sys, "ps1")
            return
        if self._watched is not shell:
            from . import lifecycle

            shell.events.register("pre_run_cell", self._clear)
            self._watched = shell
            lifecycle.on_unload("cell-interrupts", self.forget)  # the hook went with the rest
        self._interrupted = True
        _end_the_cell_as_interrupted(shell)

    def forget(self) -> None:
        """Unregister the pre_run_cell hook (`%unload_ext`: it outlived the extension)."""
        shell, self._watched, self._interrupted = self._watched, None, False
        if shell is not None and self._clear in shell.events.callbacks["pre_run_cell"]:
            shell.events.unregister("pre_run_cell", self._clear)

    def check(self) -> None:
        """Raise KeyboardInterrupt if a call earlier in this cell (or script) was interrupted."""
        from .refusals import on_purpose

        if not self._interrupted or threading.current_thread() is not threading.main_thread():
            return
        if self._in_a_cell:
            raise on_purpose(KeyboardInterrupt(INTERRUPTED_EARLIER))
        self._interrupted = False  # delivered once: a script that catches it may go on
        shell = _shell()
        if _running_a_cell(shell):
            return  # the prompt after `ipython -i script.py` starts clean
        if shell is not None or not hasattr(sys, "ps1"):  # not `python -i script.py`'s `>>>`
            raise on_purpose(KeyboardInterrupt(INTERRUPTED_EARLIER_IN_SCRIPT))

    def _clear(self, *info: Any) -> None:
        self._interrupted = False


RUN_STOPPED = "a call in this cell was interrupted: the cells queued after it do not run"


def _end_the_cell_as_interrupted(shell: Any) -> None:
    """Have the running cell end as an interrupted cell does: its reply says "error", so the
    kernel drops the cells queued after it (Run All). Why: the interrupted call returned what
    it finished, so the cell ended "ok", and one press of the stop button ran every queued
    cell, the next batch included (a queued 3,000-token call ran 197 s more). Nothing is shown
    for it: the call said what it kept. A cell that fails later reports its own error."""
    result = shell.displayhook.exec_result
    if result.error_in_exec is None:
        result.error_in_exec = KeyboardInterrupt(RUN_STOPPED)


def _shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def _running_a_cell(shell: Any) -> bool:
    """Whether `shell` is running a cell now (IPython hands the displayhook the cell's result
    for as long as it runs), not a script (`ipython script.py`) or a widget's callback."""
    displayhook = getattr(shell, "displayhook", None)
    return getattr(displayhook, "exec_result", None) is not None


CELL_INTERRUPTS = CellInterrupts()
"""This kernel's record of the current cell's interrupt."""
