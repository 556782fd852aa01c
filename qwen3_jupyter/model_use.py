"""One thread at a time uses the kernel's model.

Why: the fast path decodes into one static cache and one captured graph per shape, so two
generations at once (a `generate_batch` in a thread beside a `%qwen3` cell) would overwrite each
other's tokens without any error, and an unload, a model switch or a cleanup of the allocator
mid-generation frees or disturbs what the other call is using. A call from a second thread is
refused at once (waiting would leave its cell silent for as long as the other call runs); the
holding thread may nest (a batch's chunks, the fast path falling back to eager).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from .interrupts import interrupt_deferred


class ModelBusy(RuntimeError):
    """Another thread is using the kernel's model: generating, loading or unloading it."""


STOPPABLE = ("a generation", "a batch", "a %qwen3 cell", "an inference() chat")
"""The activities that decode, and so check for a stop at every step."""


class ModelUse:
    """The lock, what holds it ("a batch", and the thread), and how deep the holder nests."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._whom = threading.Lock()
        """Guards who holds the model (user, owner) and the stop asked of them: `request_stop`
        from another thread read them one at a time, so a stop could land on the next holder
        or be told asked and then be lost."""
        self._user: tuple[str, str] | None = None
        self._depth = 0
        self._owner: int | None = None
        """The holding thread's ident (set with `_user`)."""
        self._stop = threading.Event()
        """Set by `request_stop`; the holder raises KeyboardInterrupt at its next step."""
        self._stop_for: int | None = None
        """The thread the stop was asked of (a thread that took the model since is not it)."""
        self._frames: list[Any] = []
        """The frame of each `with` holding the model now, outermost first."""
        self._decoding: tuple[int, Any] | None = None
        """The thread decoding now and the frame of its `decoding()` block (see there)."""

    @property
    def user(self) -> str | None:
        """What holds the model now ("a batch in thread 'MainThread'"), None when it is free."""
        user = self._user
        return f"{user[0]} in thread {user[1]!r}" if user else None

    @property
    def held_elsewhere(self) -> str | None:
        """What holds the model in another thread than this one ("a batch in thread
        'Thread-3'"), or None: its cache and activations are live tensors no name reaches."""
        with self._whom:
            user, owner = self._user, self._owner
        if user is None or owner == threading.get_ident():
            return None
        return f"{user[0]} in thread {user[1]!r}"

    @property
    def stoppable(self) -> bool:
        """Whether the holder decodes, so `request_stop` reaches it (loading, a warm-up or a
        cleanup has no step to stop at)."""
        user = self._user
        return user is not None and user[0].startswith(STOPPABLE)

    def hold(self, activity: str) -> AbstractContextManager[None]:
        """Hold the model for `activity` for a `with` block, or raise ModelBusy."""
        return _Hold(self, activity)

    def _enter(self, activity: str, frame: Any) -> None:
        acquired = False
        try:
            with interrupt_deferred():  # an interrupt between the two would keep the lock
                acquired = self._lock.acquire(blocking=False)
                if acquired:
                    self._frames.append(frame)
                    self._depth += 1
                    if self._depth == 1:
                        with self._whom:
                            self._user = (activity, threading.current_thread().name)
                            self._owner = threading.get_ident()
                            self._stop.clear()
        except KeyboardInterrupt:
            if acquired:
                self._exit()
            raise
        if not acquired:
            how = " (or stop it: %qwen3 --stop)" if self.stoppable else ""
            raise ModelBusy(
                f"the model is busy: {self.user or 'a call in another thread'}; wait for it to "
                f"end{how}, then run this again"
            )

    def _exit(self) -> None:
        if self._owner != threading.get_ident() or self._depth == 0:
            return  # given back already (release_leftover): nothing of this thread's to release
        with interrupt_deferred():  # an interrupt mid-way would keep the lock for good
            if self._frames:
                self._frames.pop()
            self._depth -= 1
            if self._depth == 0:
                with self._whom:
                    self._user = None
                    self._owner = None
                    self._stop.clear()
            self._lock.release()

    def request_stop(self) -> str | None:
        """Ask the call holding the model to stop at its next step; what holds it, or None.

        Why: a call in a background thread (a `generate_batch` started so the notebook stays
        free) cannot be interrupted, since an interrupt reaches only the main thread. The
        holder checks at every decode step and between batches (`check_stop`) and then ends
        as an interrupt would end it, keeping what it finished."""
        with self._whom:
            user = self.user
            if user is not None and self.stoppable:
                self._stop_for = self._owner
                self._stop.set()
        return user

    def check_stop(self) -> None:
        """Raise KeyboardInterrupt in the holding thread if a stop was asked of it (once)."""
        if self._stop.is_set() and self._stop_for == threading.get_ident() == self._owner:
            self._stop.clear()
            raise KeyboardInterrupt

    def decoding(self) -> AbstractContextManager[None]:
        """Mark a decode for a `with` block; one started inside it raises ModelBusy.

        Why: the holding thread may nest, so only this mark catches a generation started from
        a running one's streaming callback (`on_text`), which on the fast path decodes into the
        same static cache and silently changes the running answer's tokens (measured)."""
        return _Decoding(self)

    def _start_decoding(self, frame: Any) -> None:
        current, thread = self._decoding, threading.get_ident()
        if current is not None and current[0] == thread and _on_stack(current[1], frame):
            raise ModelBusy(
                "a generation cannot start inside another one's on_text callback (they would "
                "share the model's decode cache): start it after that call returns"
            )
        self._decoding = (thread, frame)  # one assignment: an interrupt cannot half-set it

    def _end_decoding(self) -> None:
        current = self._decoding
        if current is not None and current[0] == threading.get_ident():
            self._decoding = None

    def release_leftover(self) -> bool:
        """Release the holds this thread kept by accident; True if there was one.

        Why: an interrupt landing exactly as a hold is left (before `_exit` can defer it) keeps
        the lock, and every other thread would then be refused for the rest of the kernel. A
        hold whose `with` is no longer on this thread's stack is such a leftover; one whose
        `with` still runs (a cell run from inside a generation, say) is in use and kept. A
        decode mark left the same way is dropped too (it would pin its frame's locals)."""
        here: Any = sys._getframe(1)
        decoding = self._decoding
        if (
            decoding is not None
            and decoding[0] == threading.get_ident()
            and not _on_stack(decoding[1], here)
        ):
            self._decoding = None  # left by an interrupt as it began: no decode runs
        if self._owner != threading.get_ident() or self._depth == 0:
            return False
        running = set()
        frame = here
        while frame is not None:
            running.add(id(frame))
            frame = frame.f_back
        released = False
        while self._depth and (not self._frames or id(self._frames[-1]) not in running):
            self._exit()
            released = True
        return released


class _Hold:
    """`ModelUse.hold`'s context manager (a class: a generator's could be left suspended, still
    holding the lock, by an interrupt landing as it enters)."""

    def __init__(self, use: ModelUse, activity: str) -> None:
        self.use, self.activity = use, activity

    def __enter__(self) -> None:
        self.use._enter(self.activity, sys._getframe(1))

    def __exit__(self, *exception: object) -> None:
        self.use._exit()


class _Decoding:
    """`ModelUse.decoding`'s context manager (a class, for the same reason as `_Hold`)."""

    def __init__(self, use: ModelUse) -> None:
        self.use = use

    def __enter__(self) -> None:
        self.use._start_decoding(sys._getframe(1))

    def __exit__(self, *exception: object) -> None:
        self.use._end_decoding()


def _on_stack(frame: Any, innermost: Any) -> bool:
    """Whether `frame` is `innermost` or one of its callers (still running)."""
    while innermost is not None:
        if innermost is frame:
            return True
        innermost = innermost.f_back
    return False


def stop() -> str:
    """Ask the call that is using the kernel's model (a batch in a thread, say), and every call
    to a server running in another thread, to stop at its next step; each keeps what it
    finished, as an interrupt would. One line says what was asked."""
    from .models import HOLDER
    from .said import Said
    from .server_calls import SERVER_CALLS

    user = HOLDER.use.request_stop()
    asked = ([user] if user is not None and HOLDER.use.stoppable else []) + (
        SERVER_CALLS.request_stop()
    )
    if len(asked) == 1:
        return Said(f"asked {asked[0]} to stop at its next step (it keeps what it finished)")
    if asked:
        return Said(
            f"asked {', '.join(asked[:-1])} and {asked[-1]} to stop, each at its next step "
            "(each keeps what it finished)"
        )
    if user is not None:
        return Said(f"{user} cannot be stopped part-way; it ends by itself")
    return Said("nothing is using the model or a server: nothing to stop")


def stop_point() -> None:
    """Where a call using the kernel's model may be stopped by `stop()` (a decode step's end,
    between batches): raises KeyboardInterrupt there, in the holding thread only."""
    from .models import HOLDER

    HOLDER.use.check_stop()


_STEP_HOOK = threading.local()


def decode_step_done() -> None:
    """A decode step's end: where `stop()` may stop the call, and where the thread's step
    hook runs (a batch's progress line ticks there: a chunk takes minutes with real weights,
    and its line said "0/8 prompts · 0.0 s" until the chunk ended)."""
    stop_point()
    hook = getattr(_STEP_HOOK, "hook", None)
    if hook is not None:
        hook()


@contextlib.contextmanager
def at_each_step(hook: Callable[[], None]) -> Iterator[None]:
    """Run `hook` at each decode step's end in this thread, for the block."""
    previous = getattr(_STEP_HOOK, "hook", None)
    _STEP_HOOK.hook = hook
    try:
        yield
    finally:
        _STEP_HOOK.hook = previous


def holding(local: bool, activity: str) -> AbstractContextManager[None]:
    """Hold the kernel's model for a call that uses it (`local`); a server's call holds nothing.
    Held from the start of the call, before it touches the engine it shares with the holder."""
    if not local:
        return contextlib.nullcontext()
    from .models import HOLDER

    return HOLDER.in_use(activity)
