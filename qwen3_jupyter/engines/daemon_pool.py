"""Worker threads for a server batch that never hold the process open.

Why not `concurrent.futures.ThreadPoolExecutor`: its workers are joined at interpreter exit,
and each drains every prompt still queued first. A script that ran `generate_batch(server=...)`
in a daemon thread, and ended, took the whole batch's time to exit (25 s for 6 slow prompts,
hours for a large batch against a stalled server). Here the workers are daemon threads: the
process ends when the script does, as a daemon thread's work always has.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Work = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


class DaemonPool:
    """`submit` and `shutdown(cancel_futures=True)` of an executor, on `workers` daemon
    threads; a worker ends after its current item once the pool is shut down."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._shut = False
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}_{n}", daemon=True)
            for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        if self._shut:  # no worker would ever take it: its future would never end
            raise RuntimeError("submit after shutdown: this pool's workers have ended")
        future: Future[T] = Future()
        self._queue.put((future, function, args))
        return future

    def shutdown(self) -> None:
        """Cancel the items not started; each worker ends once its current one does."""
        self._shut = True
        while True:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                break
            if work is not None:  # cancelled and notified: `wait()` counts it done
                work[0].cancel()
                work[0].set_running_or_notify_cancel()
        for _ in self._workers:
            self._queue.put(None)

    def _work(self) -> None:
        while (work := self._queue.get()) is not None:
            _run(work)
            del work  # a finished item's prompt and result are not kept by an idle worker


def _run(work: _Work) -> None:
    future, function, args = work
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = function(*args)
    except BaseException as exc:  # the batch's collector decides what it means
        future.set_exception(exc)
    else:
        future.set_result(result)
