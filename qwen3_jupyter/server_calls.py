"""`%qwen3 --stop` for calls to a server running in a background thread.

Why: an interrupt reaches only the main thread, and a `--server` call holds no model (see
model_use), so a `generate_batch(server=...)` started in a thread to keep the notebook free could
only be waited out. Such a call registers its thread while it runs (`running`); `stop()` asks
every registered call of another thread, and each ends at its next check (`check_stop`: between
a batch's results, after each streamed token) as an interrupt would end it, keeping what it
finished.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class _Call:
    activity: str
    thread: str
    stop: threading.Event = field(default_factory=threading.Event)


class ServerCalls:
    """The calls to a server running now, one entry per thread (the outermost call's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, _Call] = {}

    def running(self, activity: str) -> _Running:
        """Register this thread's call for a `with` block (a nested call keeps the outer's)."""
        return _Running(self, activity)

    def request_stop(self) -> list[str]:
        """Ask every call of another thread to stop; what each one is ("a --server batch in
        thread 'batcher'")."""
        here = threading.get_ident()
        with self._lock:
            asked = [call for ident, call in self._calls.items() if ident != here]
        for call in asked:
            call.stop.set()
        return [f"{call.activity} in thread {call.thread!r}" for call in asked]

    def check_stop(self) -> None:
        """Raise KeyboardInterrupt if a stop was asked of this thread's call (once)."""
        call = self._calls.get(threading.get_ident())
        if call is not None and call.stop.is_set():
            call.stop.clear()
            raise KeyboardInterrupt


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

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._registered:
            with self.calls._lock:
                self.calls._calls.pop(threading.get_ident(), None)


SERVER_CALLS = ServerCalls()
"""The kernel's calls to servers running now."""
