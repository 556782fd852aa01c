"""Batched generation with out-of-memory back-off: left-padded batches, results in input order.

An out-of-memory error (CUDA's, or the configured memory budget being exceeded by the tensors
generation really holds) frees memory and retries the same prompts at half the batch size, down
to 1. Finished batches are never lost: they are appended to the JSON-lines file as they finish,
and an interrupt returns what was finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .generation import (
    GenerationOOM,
    GenerationOptions,
    MemoryGuard,
    Result,
    build_messages,
    completed_result,
    current_memory,
    eos_ids,
    prepare_generate,
    release_after_generation,
)
from .memory import format_bytes
from .models import LoadedModel

BUDGET_ENV = "QWEN3_JUPYTER_MEMORY_BUDGET"
_SIZE = re.compile(r"^\s*([\d.]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(text: str) -> int:
    """Bytes from '512MiB', '2GB', '1.5GiB' or a plain number of bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 512MiB, 2GB, 1000000)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    scale = 1024 ** " kmgt".index(unit[0]) if binary and unit[0] in "kmgt" else _UNITS[unit[:1]]
    return int(number * scale)


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
    back_offs: tuple[BackOff, ...]
    interrupted: bool
    seconds: float
    peak_tensor_bytes: int
    out_path: str | None

    def summary(self) -> str:
        pieces = [f"{self.completed}/{self.total} prompts", f"{self.seconds:.2f} s"]
        if self.back_offs:
            pieces.append(
                f"out of memory {len(self.back_offs)}x: batch size "
                f"{self.requested_batch_size} -> {self.held_batch_size} held"
            )
        else:
            pieces.append(f"batch size {self.held_batch_size} held")
        pieces.append(f"peak generation tensors {format_bytes(self.peak_tensor_bytes)}")
        if self.interrupted:
            pieces.append("interrupted: finished results kept")
        if self.out_path:
            pieces.append(f"written to {self.out_path}")
        return " · ".join(pieces)


class BatchResults(list[Result]):
    """The results in input order, with the run's report."""

    report: BatchReport


def options_from_kwargs(kwargs: dict[str, Any]) -> GenerationOptions:
    """GenerationOptions from keyword arguments, with a clear error for unknown names."""
    known = {f.name for f in fields(GenerationOptions)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
    return GenerationOptions(**kwargs)


def generate_batch(
    prompts: Sequence[str],
    batch_size: int = 4,
    *,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    memory_budget: int | str | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> BatchResults:
    """Generate an answer for every prompt, `batch_size` at a time, through the loaded model.

    Options are GenerationOptions fields (think, max_new_tokens, greedy, seed, ...). Results
    come back in input order. `memory_budget` (bytes or '2GiB'; default
    $QWEN3_JUPYTER_MEMORY_BUDGET) caps the tensors one batch may hold. `out` appends one JSON
    line per prompt as each batch finishes.
    """
    from .session import SESSION

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    prompt_list = [str(p) for p in prompts]
    generation = options_from_kwargs(options)
    budget_value = memory_budget if memory_budget is not None else os.environ.get(BUDGET_ENV)
    budget = parse_size(budget_value) if isinstance(budget_value, str) else budget_value
    loaded = SESSION.load(SESSION.choice(model, device, dtype))
    return run_batches(loaded, prompt_list, batch_size, generation, budget, out, progress)


def run_batches(
    loaded: LoadedModel,
    prompts: list[str],
    batch_size: int,
    options: GenerationOptions,
    budget: int | None,
    out: str | os.PathLike[str] | None,
    progress: bool,
) -> BatchResults:
    """The batching loop: back off on out-of-memory, write as batches finish, keep on interrupt."""
    from tqdm.auto import tqdm

    results = BatchResults()
    back_offs: list[BackOff] = []
    size, position, peak, interrupted = batch_size, 0, 0, False
    started = time.perf_counter()
    writer = _JsonLines(Path(out)) if out is not None else None
    bar = tqdm(total=len(prompts), desc="qwen3 batch", unit="prompt", disable=not progress)
    try:
        while position < len(prompts):
            chunk = prompts[position : position + size]
            try:
                chunk_results, chunk_peak = _generate_chunk(loaded, chunk, options, budget)
            except GenerationOOM as exc:
                back_offs.append(BackOff(position, size, str(exc)))
                if size == 1:
                    raise GenerationOOM(
                        f"out of memory even at batch size 1 (prompt {position}; "
                        f"{len(results)} finished results kept): {exc}"
                    ) from None
                size = max(1, size // 2)
                bar.set_postfix(batch_size=size)
                continue
            peak = max(peak, chunk_peak)
            with _interrupt_deferred():  # a finished batch is both kept and written, or neither
                if writer is not None:
                    writer.write(position, chunk_results, size)
                results.extend(chunk_results)
            position += len(chunk)
            bar.update(len(chunk))
    except KeyboardInterrupt:
        interrupted = True
        release_after_generation(loaded.device, None)
    finally:
        bar.close()
    results.report = BatchReport(
        total=len(prompts),
        completed=len(results),
        requested_batch_size=batch_size,
        held_batch_size=size,
        back_offs=tuple(back_offs),
        interrupted=interrupted,
        seconds=time.perf_counter() - started,
        peak_tensor_bytes=peak,
        out_path=str(out) if out is not None else None,
    )
    return results


def _generate_chunk(
    loaded: LoadedModel, prompts: list[str], options: GenerationOptions, budget: int | None
) -> tuple[list[Result], int]:
    """One left-padded batch; out-of-memory is turned into GenerationOOM after freeing."""
    import torch

    tokenizer, model, device = loaded.tokenizer, loaded.model, loaded.device
    texts = [
        tokenizer.apply_chat_template(
            build_messages(p, options),
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=options.think,
        )
        for p in prompts
    ]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left").to(device)
    prompt_lengths = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
    width = int(inputs["input_ids"].shape[1])
    guard = MemoryGuard(model, budget)
    kwargs = prepare_generate(tokenizer, device, options, guard)
    memory_before_free: int | None = None
    oom_message = None
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            sequences = model.generate(**inputs, **kwargs)
        new_rows = sequences[:, width:].tolist()
        del sequences
    except torch.OutOfMemoryError as exc:
        oom_message = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
    latency = time.perf_counter() - started
    memory_before_free = current_memory(device)[0]
    del inputs
    guard.release()
    if oom_message is not None:
        release_after_generation(device, None)
        raise GenerationOOM(oom_message)
    eos = eos_ids(model, tokenizer)
    results = []
    for prompt, prompt_len, row in zip(prompts, prompt_lengths, new_rows, strict=True):
        ids, stop = _until_eos(row, eos)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append(
            completed_result(
                loaded, prompt, options, text, prompt_len, len(ids), latency, guard, stop
            )
        )
    freed = release_after_generation(device, memory_before_free)
    if freed is not None:
        results = [_with_freed(r, freed) for r in results]
    return results, guard.peak_tensor_bytes


def _with_freed(result: Result, freed: int) -> Result:
    from dataclasses import replace

    return replace(result, memory_freed_bytes=freed)


def _until_eos(row: list[int], eos: set[int]) -> tuple[list[int], str]:
    """A row's new tokens up to (not including) its first end-of-sequence token."""
    for i, token in enumerate(row):
        if token in eos:
            return row[:i], "eos"
    return row, "length"


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold a kernel interrupt (SIGINT) until the block has run, then deliver it.

    Without this, an interrupt landing between writing a batch to the JSONL file and adding it
    to the results would leave the file with results the notebook does not have.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if not received or previous is signal.SIG_IGN:
        return
    if callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    else:
        raise KeyboardInterrupt


class _JsonLines:
    """Appends results as JSON lines, flushed and synced per batch so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, first_index: int, results: Iterable[Result], batch_size: int) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for offset, result in enumerate(results):
                record = {"index": first_index + offset, "batch_size": batch_size}
                record.update(asdict(result))
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
