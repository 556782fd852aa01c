"""One fast decode's host side: the tokens read one step late, the ids and stops per row, the
text streamed to the caller. Kept apart from the engine, which builds and runs the device side."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..generation import Completion, GenerationOptions
from ..stream_pace import next_wait, settled
from .base import TextCallback


class TokenReader:
    """Reads each step's tokens on the host one step late, so the device never idles.

    On CUDA a step's tokens are copied to pinned memory behind the step and read after the next
    step has been queued; on the CPU they are read at once.
    """

    def __init__(self, tokens: Any) -> None:
        import torch

        self.tokens = tokens
        self.cuda = tokens.device.type == "cuda"
        self._pending: list[tuple[Any, Any]] = []
        if self.cuda:
            self._host = [torch.empty_like(tokens, device="cpu").pin_memory() for _ in range(2)]
            self._events = [torch.cuda.Event() for _ in range(2)]
            self._turn = 0

    def queued(self) -> list[list[int]] | None:
        """Note the step just queued; the rows of the previous one, if it is readable now."""
        if not self.cuda:
            return [[int(t) for t in row] for row in self.tokens.tolist()]
        host, event = self._host[self._turn], self._events[self._turn]
        self._turn ^= 1
        host.copy_(self.tokens, non_blocking=True)
        event.record()
        self._pending.append((host, event))
        return self._read() if len(self._pending) > 1 else None

    def drain(self) -> list[list[int]] | None:
        """The last queued step's rows (CUDA only; the CPU has nothing pending)."""
        return self._read() if self._pending else None

    def _read(self) -> list[list[int]]:
        host, event = self._pending.pop(0)
        event.synchronize()
        return [[int(t) for t in row] for row in host.tolist()]


@dataclass
class DecodeRun:
    """One decode's bookkeeping on the host: the ids per row and when each row stopped."""

    rows: int
    peak_rss: int
    ids: list[list[int]] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    first_token_s: float | None = None
    interrupted: bool = False
    latency: float = 0.0
    setup_seconds: float = 0.0
    memory_at_end: int | None = None
    peak_tensor_bytes: int = 0
    completions: list[Completion] = field(default_factory=list)

    def note(
        self, tokens: list[int], eos: list[int], options: GenerationOptions, t0: float
    ) -> None:
        """Append one step's token to every row still going."""
        if not self.ids:
            self.ids = [[] for _ in range(self.rows)]
            self.stopped = [False] * self.rows
            self.first_token_s = time.perf_counter() - t0
        for row in range(self.rows):
            if self.stopped[row] or len(self.ids[row]) >= options.max_new_tokens:
                continue
            self.ids[row].append(tokens[row])
            if tokens[row] in eos and not options.ignore_eos:
                self.stopped[row] = True

    def done(self, options: GenerationOptions) -> bool:
        return all(
            stop or len(ids) >= options.max_new_tokens
            for stop, ids in zip(self.stopped, self.ids, strict=True)
        )

    def finish(self, prompts: list[str], mask: Any, tokenizer: Any, eos: list[int]) -> None:
        lengths = [int(n) for n in mask.sum(dim=1).tolist()]
        for row, prompt in enumerate(prompts):
            ids = self.ids[row] if self.ids else []
            if self.interrupted:
                stop = "interrupted"
            elif ids and ids[-1] in eos and self.stopped[row]:
                stop = "eos"
            else:
                stop = "length"
            self.completions.append(
                Completion(
                    prompt=prompt,
                    text=tokenizer.decode(ids, skip_special_tokens=True),
                    prompt_tokens=lengths[row],
                    token_ids=tuple(ids),
                    latency_s=self.latency,
                    stop_reason=stop,
                    time_to_first_token_s=self.first_token_s,
                )
            )


class TextStream:
    """Decoded text to the caller at most every `interval` seconds (`stream_pace`: longer for
    a long text, a character still arriving held back)."""

    def __init__(self, tokenizer: Any, on_text: TextCallback, interval: float) -> None:
        self.tokenizer, self.on_text, self.interval = tokenizer, on_text, interval
        self._last = 0.0
        self._wait = interval
        self._shown: str | None = None

    def update(self, ids: list[int]) -> None:
        now = time.perf_counter()
        if now - self._last >= self._wait:
            self._last = now
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            self._wait = next_wait(self.interval, text)
            self._shown = settled(text)
            try:
                self.on_text(self._shown)
            except Exception as exc:
                raise CallbackFailed(exc) from exc

    def flush(self, text: str) -> None:
        """The whole `text` once more, if the last paced call did not have it all (the tokens
        after it, a character it held back): the caller's last text is the answer. After the
        run: an error of the caller's is raised as it is."""
        if text and text != self._shown:
            self._shown = text
            self.on_text(text)


class CallbackFailed(Exception):
    """The caller's `on_text` raised `error`: not a failure of the fast path."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error
