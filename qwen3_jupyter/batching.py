"""Batched generation with out-of-memory back-off: left-padded batches, results in input order.

An out-of-memory error (CUDA's, or the configured memory budget being exceeded by the tensors
generation really holds) frees memory and retries the same prompts at half the batch size, down
to 1. Finished batches are never lost: they are appended to the JSON-lines file as they finish,
and an interrupt returns what was finished.
"""

from __future__ import annotations

import contextlib
import errno
import json
import numbers
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import display
from .batch_progress import BatchProgress
from .engines.seeding import seeded
from .file_kinds import special_kind
from .generation import (
    GenerationOOM,
    GenerationOptions,
    Result,
    check_arguments,
    release_after_generation,
)
from .interrupts import CELL_INTERRUPTS, interrupt_deferred, interrupts_caught
from .magic_args import refuse_unknown_keywords
from .memory import format_bytes
from .model_use import at_each_step, stop_point
from .refusals import shown_at_the_callers_line
from .resume import earlier_results, options_record

ChunkGenerator = Callable[[list[str], GenerationOptions, "int | None"], tuple[list[Result], int]]
"""Decodes one left-padded batch: (prompts, options, memory budget) -> (results, peak bytes)."""

BUDGET_ENV = "QWEN3_JUPYTER_MEMORY_BUDGET"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i)?)?b?\s*$", re.IGNORECASE)
_PREFIXES = "kmgt"


def parse_size(text: str) -> int:
    """Bytes from '512MiB', '2GB', '1.5GiB' or a plain number of bytes; more than 0, since a
    budget of nothing only fails once the model has run."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 512MiB, 2GB, 1000000)")
    number, prefix, binary = float(match.group(1)), (match.group(2) or "").lower(), match.group(3)
    power = _PREFIXES.index(prefix) + 1 if prefix else 0
    size = int(number * (1024 if binary else 1000) ** power)
    if size < 1:
        raise ValueError(f"{text!r} is less than 1 byte: give a budget such as 512MiB or 2GB")
    return size


@dataclass(frozen=True)
class BackOff:
    """One out-of-memory retry: where it happened, at which size, and why."""

    first_prompt: int
    batch_size: int
    message: str


@dataclass(frozen=True)
class BatchReport:
    """What a batched run did: the batch size that held, the back-offs, whether it finished."""

    total: int
    completed: int
    requested_batch_size: int
    held_batch_size: int
    """The batch size the run ended with; 0 when it ran out of memory even at batch size 1."""
    back_offs: tuple[BackOff, ...]
    interrupted: bool
    seconds: float
    peak_tensor_bytes: int
    out_path: str | None
    failed: int = 0
    """Prompts that got no answer (their Result's `error` says why); not in `completed`."""
    concurrency: int | None = None
    """Requests in flight at once when a server answered (None: batches in this kernel)."""
    retries: int = 0
    """Requests sent again after a 429/503 or a dropped connection (server batches)."""
    completion_tokens: int = 0
    """Tokens generated over the whole run: with `seconds`, the batch's throughput, the figure
    a batch is run for (a footer gives it for one call; a batch said only how long it took)."""
    out_lines_before: int = 0
    """Lines `out_path` held before this run: results are appended, so a rerun of the cell
    added its rows to the last run's (read back, every prompt twice) and said "written to"."""
    gaps: bool = False
    """The results kept are not the first prompts' (a server batch stopped midway keeps every
    request that finished): `BatchResults.indices` says which prompt each answers."""
    resumed: int = 0
    """Results taken from `out_path`, which an earlier run wrote for the same prompts, model
    and options (`resume`): not asked again, and not in `seconds` or `completion_tokens`."""
    written: int | None = None
    """Lines this run appended to `out_path` (None: not counted)."""
    cut_line_removed: bool = False
    """`out_path` ended in a line a killed run had cut short, which was removed (every JSON
    lines reader failed on the whole file)."""

    def __repr__(self) -> str:
        """The summary, not 16 fields on one line (each is there to read: `report.seconds`)."""
        return f"BatchReport: {self.summary()}"

    def summary(self) -> str:
        if self.total == 0:  # not "0/0 prompts · batch size 0 held · peak ... 0 B"
            return "no prompts: nothing was generated"
        pieces = [f"{self.completed}/{self.total} prompts"]
        if self.resumed:
            pieces.append(
                f"{self.resumed} taken from {self.out_path}, an earlier run's (same prompts, "
                "model and options; another --out asks them again)"
            )
            if self.resumed == self.total:
                return " · ".join(pieces)
        pieces.append(f"{self.seconds:.2f} s")
        if self.completion_tokens and self.seconds > 0:
            rate = self.completion_tokens / self.seconds
            pieces.append(f"{self.completion_tokens:,} tokens, {rate:.1f} tok/s")
        if self.concurrency is not None:
            pieces.append(f"{self.concurrency} concurrent requests")
            if self.retries:
                pieces.append(f"{self.retries} retried")
            if self.failed:
                pieces.append(f"{self.failed} failed (see .error)")
        else:
            if self.back_offs and self.held_batch_size == 0:
                pieces.append(
                    f"out of memory {len(self.back_offs)}x: batch size "
                    f"{self.requested_batch_size} -> 1, out of memory even at 1"
                )
            elif self.back_offs:
                pieces.append(
                    f"out of memory {len(self.back_offs)}x: batch size "
                    f"{self.requested_batch_size} -> {self.held_batch_size} held"
                )
            else:  # "batch size 4 held" read as the size used for 2 prompts
                pieces.append(f"batch size {min(self.held_batch_size, self.total)} held")
            pieces.append(f"peak generation tensors {format_bytes(self.peak_tensor_bytes)}")
        if self.interrupted and self.completed == self.resumed and not self.failed:
            pieces.append("interrupted before any prompt finished: nothing new kept")
        elif self.interrupted and self.completed == self.resumed:  # a failed one is kept too
            pieces.append("interrupted: the failed results kept (see .error)")
        elif self.interrupted and self.gaps:
            pieces.append("interrupted: finished results kept (their prompts: .indices)")
        elif self.interrupted:
            pieces.append("interrupted: finished results kept")
        if self.out_path and self.written == 0:
            pieces.append(f"nothing written to {self.out_path}")
        elif self.out_path and self.out_lines_before:
            pieces.append(
                f"appended to {self.out_path} after its {self.out_lines_before:,} earlier lines"
            )
        elif self.out_path:
            pieces.append(f"written to {self.out_path}")
        if self.cut_line_removed:
            pieces.append("its last line, cut short by a killed run, was removed")
        return " · ".join(pieces)


class BatchResults(list[Result]):
    """The results in input order, with the run's report. `indices[i]` is the position among
    the prompts of the one `self[i]` answers: `range(len(self))` unless a server batch stopped
    midway, which keeps every request that finished, not only the first ones (a `zip` of the
    prompts with the results would then pair them wrongly)."""

    report: BatchReport

    def __init__(self, results: Iterable[Result] = (), indices: Iterable[int] | None = None):
        super().__init__(results)
        self._indices = None if indices is None else list(indices)

    @property
    def indices(self) -> list[int]:
        return list(range(len(self))) if self._indices is None else list(self._indices)

    ROWS_SHOWN = 3

    def __repr__(self) -> str:
        """A few lines: how many, the run's summary and the first rows, each with its prompt.
        Why: typed alone, 30 results were 5,370 characters of footers (600 KB for 1,000
        answers), and a row did not say which prompt it answered."""
        count = len(self)
        lines = [f"BatchResults: {count} result{'s' if count != 1 else ''}"]
        report = getattr(self, "report", None)
        if report is not None:
            lines[0] += f" · {report.summary()}"
        for index, result in zip(self.indices[: self.ROWS_SHOWN], self, strict=False):
            lines.append(f"[{index}] {_short(result.prompt)} → {_outcome(result)}")
        rest = count - self.ROWS_SHOWN
        if rest > 0:
            lines.append(f"… {rest} more: results[i] is one, pandas.DataFrame(results) a table")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """The same lines as a cell's result (IPython's pretty printer lists every item)."""
        printer.text(repr(self))


_STOPPED_WHILE_THINKING = {
    "length": "still thinking at max_new_tokens",
    "interrupted": "stopped while thinking",
    "eos": "the model ended while thinking",
}


def _outcome(result: Result) -> str:
    """A row's answer, or why it has none (its `''` said nothing of a thought cut short), by
    what ended it: only a budget is worth raising, not a server's own limit."""
    if result.failed:
        return f"error: {result.error}"
    if result.answer or not result.thinking:
        return _short(result.answer)
    if result.thinking_finished:
        return "(no answer after its thinking; .thinking has it)"
    why = _STOPPED_WHILE_THINKING.get(result.stop_reason, "the server ended it while thinking")
    return f"(no answer: {why}; .thinking has it)"


def options_from_kwargs(kwargs: dict[str, Any], also: Iterable[str] = ()) -> GenerationOptions:
    """GenerationOptions from keyword arguments; an unknown name is the one-line TypeError
    every API call gives, naming the closest of the fields and `also` (the caller's own
    keywords, e.g. `modle=` -> model)."""
    refuse_unknown_keywords(kwargs, {*(f.name for f in fields(GenerationOptions)), *also})
    return GenerationOptions(**kwargs)


DEFAULT_BATCH_SIZE = 4
"""Prompts per batch in this kernel when `batch_size=` (`--batch-size`) is not given."""


@shown_at_the_callers_line
def generate_batch(
    prompts: Iterable[str],
    batch_size: int | None = None,
    *,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    decode: str | None = None,
    server: str | None = None,
    concurrency: int | None = None,
    memory_budget: int | str | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> BatchResults:
    """Generate an answer for every prompt, `batch_size` at a time, through the loaded model.

    Options are GenerationOptions fields (think, max_new_tokens, greedy, seed, ...: see
    help(qwen3_jupyter.GenerationOptions)). Results
    come back in input order. `memory_budget` (bytes or '2GiB'; default
    $QWEN3_JUPYTER_MEMORY_BUDGET) caps the tensors one batch may hold. `out` appends one JSON
    line per prompt as each batch finishes. `decode` picks the in-kernel path ('fast', 'eager';
    default: fast on CUDA). `server` (or $QWEN3_JUPYTER_SERVER) sends the prompts to an
    OpenAI-compatible server instead, `concurrency` at a time, with `model` the served model.
    `model`, `device`, `dtype`, `decode` and `server` each come from the argument, then the
    environment variable ($QWEN3_JUPYTER_MODEL, ...), then `%config Qwen3Magics.<name>` when
    the extension is loaded, then the default, as for `%qwen3`.
    """
    from .api_call import api_call, configured
    from .engines import server_url
    from .model_use import holding
    from .session import SESSION

    if isinstance(prompts, (str, bytes)):  # iterating it would ask one question per character
        raise TypeError(
            "generate_batch takes a list of prompts, not one string: pass [prompt] (or use "
            "%qwen3 / inference() for a single prompt)"
        )
    if not isinstance(prompts, Iterable):
        raise TypeError(
            f"prompts={prompts!r} ({type(prompts).__name__}): generate_batch takes a list of "
            "prompts (any iterable of str)"
        )
    _refuse_a_container_of_prompts(prompts)
    asked_batch_size = batch_size
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    _check_count("batch_size", batch_size)
    if concurrency is not None:
        _check_count("concurrency", concurrency)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out={out!r} ({type(out).__name__}): must be a file path or None")
    check_arguments(
        {"model": model, "device": device, "dtype": dtype, "decode": decode, "server": server},
        {"progress": progress},
    )
    prompt_list = [str(p) if isinstance(p, str) else p for p in prompts]  # numpy's str_: str
    for index, prompt in enumerate(prompt_list):  # None or NaN would be asked as "None", "nan"
        if not isinstance(prompt, str):
            nested = isinstance(prompt, (list, tuple)) or getattr(prompt, "ndim", 0) >= 1
            advice = (
                "one prompt per item (a list of lists, or a 2-D array, has a row per item: "
                "flatten it first, e.g. [p for row in rows for p in row])"
                if nested
                else "drop or fill missing prompts first (e.g. df['prompt'].dropna().tolist())"
            )
            raise TypeError(
                f"prompt {index} is {_short(prompt)} ({type(prompt).__name__}), not text: {advice}"
            )
        if not prompt.strip():  # it would generate a full answer to nothing
            raise ValueError(
                f"prompt {index} is empty ({prompt!r}): drop blank prompts first (e.g. "
                "[p for p in prompts if p.strip()])"
            )
    generation = options_from_kwargs(options, _BATCH_KEYWORDS)
    budget = memory_budget_bytes(memory_budget)
    if not prompt_list:  # a filter that left nothing: no model is loaded, no server asked
        if progress:  # a script's log says it too (README: "with one line saying so")
            display.info("generate_batch got no prompts: nothing was generated", python_call=True)
        return _no_results(batch_size)
    if out is not None:
        check_results_file(out)  # before the load, not after it
    local = server_url(server, configured().get("server")) is None
    CELL_INTERRUPTS.check()  # a call earlier in this cell was interrupted: this one is too
    # The hold inside the call: a ModelBusy is worded for a Python caller too.
    with api_call(show_status=progress) as call, holding(local, "a batch (generate_batch)"):
        engine = call.engine(model=model, device=device, dtype=dtype, decode=decode, server=server)
        remote = engine.kind == "remote"
        ignored = _ignored_by(remote, concurrency, memory_budget, batch_size, asked_batch_size)
        if ignored is not None:
            call.notify(ignored)
        generation = SESSION.follow_template(engine, generation)
        with call.watching(engine):
            results: BatchResults = engine.generate_batch(
                prompt_list,
                generation,
                batch_size=batch_size,
                concurrency=concurrency,
                memory_budget=budget,
                out=out,
                progress=progress,
            )
        if call.status is not None:  # the progress line is cleared: say how the batch went
            call.notify(f"generate_batch · {results.report.summary()}")
        elif results.report.interrupted:
            call.notify(
                f"generate_batch interrupted: {results.report.completed}/{results.report.total} "
                "finished results kept"
            )
    CELL_INTERRUPTS.note(results.report.interrupted)
    return results


def _ignored_by(
    remote: bool,
    concurrency: int | None,
    memory_budget: object,
    batch_size: int,
    asked_batch_size: int | None = None,
) -> str | None:
    """A notice for an option the engine has no use for (as the magic says it): a notebook
    pointed at a model or a server by configuration keeps working either way, and is told.
    (`batch_size=` given to a server batch was dropped without a word.)"""
    if not remote and concurrency is not None:
        return (
            "concurrency= applies to a server: ignored for a model in this kernel, which "
            f"batches {batch_size} prompts at a time (batch_size=)"
        )
    if remote and (memory_budget is not None or asked_batch_size is not None):
        which = "memory_budget=" if memory_budget is not None else "batch_size="
        return (
            f"{which} applies to a model in this kernel: ignored for a server, which "
            "gets concurrency= requests at once"
        )
    return None


def _no_results(batch_size: int) -> BatchResults:
    """The results of a run over no prompts: empty, with a report that says so."""
    results = BatchResults()
    results.report = BatchReport(
        total=0,
        completed=0,
        requested_batch_size=batch_size,
        held_batch_size=batch_size,
        back_offs=(),
        interrupted=False,
        seconds=0.0,
        peak_tensor_bytes=0,
        out_path=None,
    )
    return results


_BATCH_KEYWORDS = (
    "batch_size",
    "model",
    "device",
    "dtype",
    "decode",
    "server",
    "concurrency",
    "memory_budget",
    "out",
    "progress",
)


def _refuse_a_container_of_prompts(prompts: object) -> None:
    """A table or a dict iterates over its column names or keys: generate_batch(df) asked the
    model its column names, with no sign that anything was wrong."""
    columns = getattr(prompts, "columns", None)
    if columns is not None and not isinstance(prompts, (list, tuple)):
        names = [str(name) for name in list(columns)[:3]]
        listed = ", ".join(repr(n) for n in names) + (", …" if len(columns) > 3 else "")
        first = names[0] if names else "prompt"
        raise TypeError(
            f"generate_batch takes a list of prompts, not a table ({type(prompts).__name__} "
            f"{f'with columns {listed}' if names else 'without columns'}): its rows would not "
            f"be read, its column names would be asked; pass the column of prompts, e.g. "
            f"generate_batch(df[{first!r}])"
        )
    if isinstance(prompts, Mapping):
        raise TypeError(
            "generate_batch takes a list of prompts, not a dict (its keys would be asked): "
            "pass list(d.values()) or list(d)"
        )


def _short(value: object) -> str:
    """`value`'s repr, cut to 60 characters (a whole row of a table was printed)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:59] + "…"


def _check_count(name: str, value: object) -> None:
    """A whole number >= 1, or a one-line TypeError/ValueError naming the argument (a float
    failed as a slice index once the model was in use, a str in a comparison)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r} ({type(value).__name__}): must be a whole number >= 1")
    if value < 1:
        raise ValueError(f"{name}={value!r}: must be >= 1")


def memory_budget_bytes(memory_budget: int | str | None) -> int | None:
    """The budget in bytes from `memory_budget`, else $QWEN3_JUPYTER_MEMORY_BUDGET, else None;
    one that cannot hold anything is refused here, before a model runs into it."""
    if memory_budget is None:
        text = os.environ.get(BUDGET_ENV)
        if not text:
            return None
        try:
            return parse_size(text)
        except ValueError as exc:
            raise ValueError(f"${BUDGET_ENV}: {exc}") from None
    if isinstance(memory_budget, str):
        try:
            return parse_size(memory_budget)
        except ValueError as exc:
            raise ValueError(f"memory_budget: {exc}") from None
    if not isinstance(memory_budget, numbers.Integral) or isinstance(memory_budget, bool):
        raise TypeError(
            f"memory_budget={memory_budget!r} ({type(memory_budget).__name__}): must be a whole "
            "number of bytes or a size like '2GiB'"
        )
    if memory_budget < 1:
        raise ValueError(f"memory_budget={memory_budget!r}: must be >= 1 byte (e.g. '2GiB')")
    return int(memory_budget)


def run_batches(
    generate_chunk: ChunkGenerator,
    device: str,
    prompts: list[str],
    batch_size: int,
    options: GenerationOptions,
    budget: int | None,
    out: str | os.PathLike[str] | None,
    progress: bool,
    model: str = "",
) -> BatchResults:
    """The batching loop (`_batches`), seeded once for the whole run: each batch reseeded
    repeated the first one's samples (rows 3-5 equal to rows 0-2 at batch size 3). Later
    batches continue the stream, so a run is reproducible for the same prompts, batch size and
    seed; the notebook's own random state is put back after it. What `out` already holds for
    these prompts from `model` with these options is taken, not asked again (`resume`)."""
    writer = _JsonLines(Path(out), options) if out is not None else None
    try:
        if writer is not None:
            writer.hold()
        earlier = earlier_results(out, prompts, model, options)
        unseeded = replace(options, seed=None)
        run = (generate_chunk, device, prompts, batch_size, unseeded, budget, writer, earlier)
        with seeded(options.seed, device):
            return _batches(*run, progress)
    finally:
        if writer is not None:
            writer.close()


def _batches(
    generate_chunk: ChunkGenerator,
    device: str,
    prompts: list[str],
    batch_size: int,
    options: GenerationOptions,
    budget: int | None,
    writer: _JsonLines | None,
    earlier: dict[int, Result],
    progress: bool,
) -> BatchResults:
    """Back off on out-of-memory, write as batches finish, keep on interrupt. The prompts
    `earlier` answers (an earlier run's lines in the results file) are not asked again."""
    todo = [index for index in range(len(prompts)) if index not in earlier]
    generated: dict[int, Result] = {}
    back_offs: list[BackOff] = []
    size, position, peak, interrupted = batch_size, 0, 0, False
    out_of_memory: str | None = None
    write_failed: str | None = None
    started = time.perf_counter()
    bar = BatchProgress(len(todo), "qwen3 batch", progress and bool(todo))
    try:
        while position < len(todo):
            stop_point()  # a stop asked for as the last batch finished: before the next one
            indices = todo[position : position + size]
            chunk = [prompts[index] for index in indices]
            try:
                with at_each_step(bar.tick):
                    chunk_results, chunk_peak = generate_chunk(chunk, options, budget)
            except GenerationOOM as exc:
                back_offs.append(BackOff(indices[0], size, str(exc)))
                if len(chunk) == 1:  # one prompt alone (a last one, say, at any batch size)
                    hint = f": {exc.hint}" if exc.hint else ""
                    finished = len(generated) + len(earlier)
                    out_of_memory = (
                        f"out of memory even at batch size 1 (prompt {indices[0]}; "
                        f"{finished} finished results kept in .results): {exc}{hint}"
                    )
                    break
                size = max(1, size // 2)
                while size >= len(chunk):  # fewer prompts were left than the batch size: the
                    size //= 2  # next try must be smaller than what ran out, not the same rows
                bar.note(f"batch size {size} after out of memory")
                continue
            peak = max(peak, chunk_peak)
            with interrupt_deferred():  # a finished batch is kept and written, not interrupted
                generated.update(zip(indices, chunk_results, strict=True))
                write_failed = append_results(writer, indices, chunk_results, len(chunk))
            position += len(chunk)
            bar.advance(len(chunk))
            if write_failed is not None:  # the rest would be kept nowhere but in memory
                break
    except KeyboardInterrupt as stop:
        interrupted = True
        peak = max(peak, getattr(stop, "peak_tensor_bytes", 0))  # the interrupted chunk's
    finally:
        with interrupts_caught() as late:  # clearing the line waits on the kernel's output:
            bar.close()  # an interrupt there lost every finished result (2 runs in 10)
    interrupted = interrupted or bool(late)
    if interrupted:  # out of the except block: the interrupted chunk's frames are gone now
        release_after_generation(device, None)
    kept = sorted({**earlier, **generated})
    results = BatchResults(({**earlier, **generated}[i] for i in kept), kept)
    results.report = BatchReport(
        total=len(prompts),
        completed=len(results),
        requested_batch_size=batch_size,
        held_batch_size=0 if out_of_memory is not None else min(size, max(1, len(todo))),
        back_offs=tuple(back_offs),
        interrupted=interrupted,
        seconds=time.perf_counter() - started,
        peak_tensor_bytes=peak,
        out_path=str(writer.shown) if writer is not None else None,
        completion_tokens=sum(r.completion_tokens for r in generated.values()),
        out_lines_before=writer.lines_before if writer is not None else 0,
        gaps=kept != list(range(len(kept))),
        resumed=len(earlier),
        written=writer.written if writer is not None else None,
        cut_line_removed=writer.cut_line_removed if writer is not None else False,
    )
    if out_of_memory is not None:
        raise GenerationOOM(out_of_memory, results=results)
    if write_failed is not None:
        raise stopped_writing(write_failed, results, len(prompts))
    return results


def append_results(
    writer: _JsonLines | None, indices: list[int], results: list[Result], batch_size: int
) -> str | None:
    """Append to the results file, if any (`indices`: the prompts' positions); why it failed,
    or None."""
    if writer is None:
        return None
    try:
        writer.write(indices, results, batch_size)
    except ResultsFileError as exc:
        return str(exc)
    return None


class ResultsFileError(OSError):
    """The results file (`out=`, `--out`) cannot be written: said before any prompt runs, or,
    when it fails midway (a full disk, a lost mount), the run stops and `results` keeps what
    finished (a traceback lost them all)."""

    def __init__(self, message: str, results: BatchResults | None = None) -> None:
        super().__init__(message)
        self.results = results


def stopped_writing(why: str, results: BatchResults, total: int) -> ResultsFileError:
    """The error a run that stopped because its results file failed ends with, saying how many
    results the file has: a last write that failed said "the run stopped there: 6 of 6 prompts
    finished", as if nothing were missing."""
    report = getattr(results, "report", None)
    in_file = (getattr(report, "written", 0) or 0) + (getattr(report, "resumed", 0) or 0)
    ended = (
        f"the run stopped there: {len(results)} of {total} prompts finished"
        if len(results) < total
        else f"every prompt had finished ({total})"
    )
    return ResultsFileError(
        f"{why}; {ended}, all kept in .results ({in_file:,} in the file)", results
    )


_RESULT_START = b'{"index"'
"""How every line `_JsonLines` writes starts: a file starting otherwise is not one (a CSV
of prompts given as --out too, a notes file), and appending would spoil it."""
_SPACE = b" \t\r\n\xef\xbb\xbf"  # blank lines, and the byte-order mark an editor adds


NOT_RESULTS = (
    '{path} holds something other than results (their lines start with {{"index"), and '
    "results are appended: name a new file"
)


def check_results_file(path: str | os.PathLike[str]) -> None:
    """Refuse now, before any model loads, the results file the run would refuse when it
    opens it: a typo in `--out` was told only after the load (minutes with real weights).
    Reads only, creates nothing; a file that does not exist yet is fine."""
    target = Path(path).expanduser()
    try:
        special = special_kind(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ResultsFileError(f"cannot write results to {target}: {exc.strerror or exc}") from None
    if target.resolve() == Path(os.devnull).resolve():
        raise ResultsFileError(f"--out {target}: give no --out (out=None) to keep no results file")
    if special and special != "a folder":  # (a folder: open's own "Is a directory" below)
        raise ResultsFileError(f"cannot write results to {target}: it is {special}")
    try:
        with target.open("rb") as handle:
            start = handle.read(4096).lstrip(_SPACE)[: len(_RESULT_START)]
    except FileNotFoundError:
        return
    except OSError as exc:  # a folder, no permission
        raise ResultsFileError(f"cannot write results to {target}: {exc.strerror or exc}") from None
    if not _RESULT_START.startswith(start):
        raise ResultsFileError(NOT_RESULTS.format(path=target))


class _JsonLines:
    """Appends results as JSON lines, flushed and synced per batch so a crash loses nothing.
    Each line records the options it was generated with (`resume` reads them back)."""

    def __init__(self, path: Path, options: GenerationOptions | None = None) -> None:
        """Open the file once now, so a path that cannot be written fails before any prompt
        runs (a folder, say, failed only when the first batch's answers were ready)."""
        self.shown = path
        self.path = path.expanduser()
        self.options = options_record(options) if options is not None else None
        self.written = 0
        self.cut_line_removed = False
        self._held: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("r+b" if self.path.exists() else "w+b") as handle:
                start = handle.read(4096).lstrip(_SPACE)[: len(_RESULT_START)]
                results = _RESULT_START.startswith(start)  # empty, or a run's first line
                if results:
                    self.cut_line_removed = _remove_cut_last_line(handle)
                handle.seek(0)
                self.lines_before = sum(
                    chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")
                )
        except OSError as exc:
            raise ResultsFileError(
                f"cannot write results to {self.path}: {exc.strerror or exc}"
            ) from None
        if not results:
            raise ResultsFileError(NOT_RESULTS.format(path=self.path))

    def hold(self) -> None:
        """Keep other runs off the file until `close()`: two jobs started on one file (an
        overlapping cron run, a second notebook) each asked every prompt and appended its
        answers, 38 lines for 20 prompts, with no word. An advisory lock (flock) on the file;
        where the file system has none (or Windows), the run goes on unlocked, as before."""
        try:
            import fcntl
        except ImportError:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ResultsFileError(
                    f"{self.path} is being written by another run now (a second job or "
                    "notebook on the same file): wait for it to end, or write this run's "
                    "results to another file"
                ) from None
            return  # no locks on this file system
        self._held = fd

    def close(self) -> None:
        """Let other runs write the file (see `hold`)."""
        if self._held is not None:
            os.close(self._held)
            self._held = None

    def write(self, indices: Iterable[int], results: Iterable[Result], batch_size: int) -> None:
        lines = []
        for index, result in zip(indices, results, strict=True):
            record: dict[str, Any] = {"index": index, "batch_size": batch_size}
            if self.options is not None:
                record["options"] = self.options
            record.update(asdict(result))
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        try:
            _append_whole("".join(lines).encode("utf-8"), self.path)
        except OSError as exc:
            raise ResultsFileError(
                f"could not append results to {self.path}: {exc.strerror or exc}"
            ) from None
        self.written += len(lines)


def _remove_cut_last_line(handle: Any) -> bool:
    """End the file at its last whole line when a run killed mid-write left its last line cut
    short (not JSON): ended with a newline and kept, it made every JSON lines reader fail on
    the whole file. A last line that is whole JSON only gets its newline. Whether one went."""
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return False
    handle.seek(max(0, end - (1 << 20)))
    tail = handle.read()
    if tail.endswith(b"\n"):
        return False
    line_start = tail.rfind(b"\n") + 1
    try:
        json.loads(tail[line_start:])
    except ValueError:
        handle.truncate(end - (len(tail) - line_start))
        return True
    handle.write(b"\n")
    return False


def _append_whole(data: bytes, path: Path) -> None:
    """Append `data` in one go, or take back what got in: a full disk cut the last line, even
    within a character, and every JSON-lines reader (pandas, `read_text`) then failed on the
    whole file. Shrinking needs no space; where it fails too (a lost mount), the next run's
    open ends the cut line instead. A kill mid-write cuts one line at most."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)  # no CRLF
    fd = os.open(path, flags, 0o666)
    try:
        whole_up_to = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, whole_up_to)
            raise
    finally:
        os.close(fd)
