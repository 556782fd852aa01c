"""Many prompts to one server, `concurrency` requests in flight, results in input order.

Requests run on worker threads (the server batches them; the kernel only waits), while the
kernel's main thread collects each result as it finishes, appends it to the JSON-lines file at
once and moves the progress line. An interrupt lands on the main thread: it closes every stream
in flight (the server aborts those requests), drops the requests not yet sent, and keeps every
finished result — written and returned. An item that fails for good is a failed Result (its
`error` says why) and the others go on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

from ..batch_progress import BatchProgress
from ..batching import BatchReport, BatchResults, _JsonLines, append_results, stopped_writing
from ..generation import GenerationOptions, Result
from ..interrupts import interrupt_deferred, interrupts_ignored
from ..resume import earlier_results
from ..server_calls import SERVER_CALLS
from .daemon_pool import DaemonPool

FINISH_AFTER_CANCEL_S = 1.0
"""How long an interrupted batch waits for its closed streams to end, before it collects."""

ItemRunner = Callable[[int, str], Result]
"""Answers one prompt, given its index (retrying what is worth retrying); raises only when
cancelled."""


class RetryCounter:
    """How many requests of a batch were sent again; shared by the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


def run_concurrently(
    prompts: list[str],
    answer: ItemRunner,
    *,
    concurrency: int,
    cancel: Callable[[], None],
    retries: RetryCounter,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    options: GenerationOptions | None = None,
    model: str = "",
) -> BatchResults:
    """Answer every prompt with `answer`, `concurrency` at a time; see the module docstring.

    `cancel` is called once on an interrupt, from the main thread: it must make the workers'
    streams end now. What `out` already holds for these prompts from `model` with `options`
    is taken, not asked again (`resume`).
    """
    writer = _JsonLines(Path(out), options) if out is not None else None
    earlier = earlier_results(out, prompts, model, options) if options is not None else {}
    finished: dict[int, Result] = dict(earlier)
    write_failed: list[str] = []  # why the results file stopped taking lines (then: stop)
    todo = [index for index in range(len(prompts)) if index not in earlier]
    interrupted = False
    started = time.perf_counter()
    bar = BatchProgress(len(todo), "qwen3 server batch", progress and bool(todo))
    pool = DaemonPool(min(concurrency, max(1, len(todo))), "qwen3-remote")
    futures: dict[Future[Result], int] = {}

    def collect(done: set[Future[Result]] | list[Future[Result]]) -> None:
        for future in sorted(done, key=futures.__getitem__):
            index = futures[future]
            if index in finished or future.cancelled() or future.exception() is not None:
                continue
            result = future.result()
            with interrupt_deferred():  # a finished item is kept and written, not interrupted
                finished[index] = result
                failure = None if write_failed else append_results(writer, [index], [result], 1)
                if failure is not None:
                    write_failed.append(failure)
            bar.advance()
            failed = sum(r.failed for r in finished.values())
            if failed:
                bar.note(f"{failed} failed")

    try:
        if writer is not None:
            writer.hold()
        futures = {pool.submit(answer, i, prompts[i]): i for i in todo}
        pending: set[Future[Result]] = set(futures)
        while pending and not write_failed:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            collect(done)
            bar.tick()
            SERVER_CALLS.check_stop()  # `%qwen3 --stop` ends a batch run in a thread here
        if write_failed:  # the rest would be kept nowhere but in memory: the streams end now
            cancel()
    except KeyboardInterrupt:
        interrupted = True
        with interrupts_ignored():  # a second press here would lose every result kept
            cancel()
            pool.shutdown()
            # A stream that had its finish chunk when it was closed still ends as a whole
            # answer, a moment later; the closed ones end at once, so this wait is short.
            wait([f for f in futures if f.running()], timeout=FINISH_AFTER_CANCEL_S)
            collect([f for f in futures if f.done()])
    finally:
        pool.shutdown()
        bar.close()
        if writer is not None:
            writer.close()
    errors = [f.exception() for f in futures if f.done() and not f.cancelled()]
    unexpected = [e for e in errors if e is not None and not (interrupted or write_failed)]
    if unexpected:
        raise unexpected[0]
    kept = sorted(finished)
    results = BatchResults((finished[i] for i in kept), kept)
    results.report = _report(
        results, len(prompts), concurrency, retries.count, interrupted, started, writer, earlier
    )
    if write_failed:
        raise stopped_writing(write_failed[0], results, len(prompts))
    return results


def interrupted_before_start(total: int, concurrency: int, started: float) -> BatchResults:
    """A batch interrupted while it was still asking the server about the model, before any
    request: no results, nothing written, reported as an interrupt midway is."""
    results = BatchResults()
    results.report = _report(results, total, concurrency, 0, True, started)
    return results


def _report(
    results: BatchResults,
    total: int,
    concurrency: int,
    retries: int,
    interrupted: bool,
    started: float,
    writer: _JsonLines | None = None,
    earlier: dict[int, Result] | None = None,
) -> BatchReport:
    """The report of a server batch; `earlier`: the results taken from the results file."""
    earlier = earlier or {}
    asked = [r for i, r in zip(results.indices, results, strict=True) if i not in earlier]
    return BatchReport(
        total=total,
        completed=sum(not r.failed for r in results),
        requested_batch_size=concurrency,
        held_batch_size=concurrency,
        back_offs=(),
        interrupted=interrupted,
        seconds=time.perf_counter() - started,
        peak_tensor_bytes=0,
        out_path=str(writer.shown) if writer is not None else None,
        failed=sum(r.failed for r in results),
        # 3 prompts: never 4 at once
        concurrency=min(concurrency, total - len(earlier)) or concurrency,
        retries=retries,
        completion_tokens=sum(r.completion_tokens for r in asked),
        out_lines_before=writer.lines_before if writer is not None else 0,
        gaps=results.indices != list(range(len(results))),
        resumed=len(earlier),
        written=writer.written if writer is not None else None,
        cut_line_removed=writer.cut_line_removed if writer is not None else False,
    )
