"""`%qwen3 --stop` for calls to a server running in a background thread.

Why: an interrupt reaches only the main thread, and a `--server` call holds no model (see
model_use), so a `generate_batch(server=...)` started in a thread to keep the notebook free could
only be waited out. Such a call registers its thread while it runs (`running`); `stop()` asks
every registered call of another thread, and each ends as an interrupt would end it, keeping
what it finished: a batch at its next check (`check_stop`, between results); a single call at
once, because the stop also closes the stream it is reading (`closing`) — a read blocked on a
server that has not sent its first token, or queued the request, would otherwise never see it —
and wakes its wait between retries (`wait`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class _Call:
    activity: str
    thread: str
    stop: threading.Event = field(default_factory=threading.Event)
    closers: list[Callable[[], None]] = field(default_factory=list)


class ServerCalls:
    """The calls to a server running now, one entry per thread (the outermost call's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, _Call] = {}

    def running(self, activity: str) -> _Running:
        """Register this thread's call for a `with` block (a nested call keeps the outer's)."""
        return _Running(self, activity)

    def request_stop(self) -> list[str]:
        """Ask every call of another thread to stop, closing the stream each is reading; what
        each one is ("a --server batch in thread 'batcher'")."""
        here = threading.get_ident()
        with self._lock:
            asked = [call for ident, call in self._calls.items() if ident != here]
            for call in asked:
                call.stop.set()
            closers = [close for call in asked for close in call.closers]
        for close in closers:
            with contextlib.suppress(Exception):
                close()
        return [f"{call.activity} in thread {call.thread!r}" for call in asked]

    def check_stop(self) -> None:
        """Raise KeyboardInterrupt if a stop was asked of this thread's call (once)."""
        if self.take_stop():
            raise KeyboardInterrupt

    def take_stop(self) -> bool:
        """Whether a stop was asked of this thread's call; True once per stop."""
        call = self._calls.get(threading.get_ident())
        if call is not None and call.stop.is_set():
            call.stop.clear()
            return True
        return False

    @contextlib.contextmanager
    def closing(self, close: Callable[[], None]) -> Iterator[None]:
        """While the block runs, a stop asked of this thread's call also runs `close` (from the
        stopping thread); a stop asked before the block runs it at once. Nothing for a thread
        with no registered call (a batch's workers: the batch closes their streams)."""
        call = self._calls.get(threading.get_ident())
        if call is None:
            yield
            return
        with self._lock:
            call.closers.append(close)
            stopped = call.stop.is_set()
        if stopped:
            close()
        try:
            yield
        finally:
            with self._lock:
                call.closers.remove(close)

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or raise KeyboardInterrupt as soon as a stop is asked of this
        thread's call: a call waiting to retry a busy server stops at once, not after it."""
        call = self._calls.get(threading.get_ident())
        if call is None:
            time.sleep(seconds)
            return
        if call.stop.wait(seconds):
            self.check_stop()


class _Running:
    """`ServerCalls.running`'s context manager."""

    def __init__(self, calls: ServerCalls, activity: str) -> None:
        self.calls, self.activity = calls, activity
        self._registered = False

    def __enter__(self) -> None:
        ident = threading.get_ident()
        with self.calls._lock:
            if ident not in self.calls._calls:
                self.calls._calls[ident] = _Call(self.activity, threading.current_thread().name)
                self._registered = True

    def __exit__(self, *exception: object) -> None:
        if self._registered:
            with self.calls._lock:
                self.calls._calls.pop(threading.get_ident(), None)


SERVER_CALLS = ServerCalls()
"""The kernel's calls to servers running now."""
