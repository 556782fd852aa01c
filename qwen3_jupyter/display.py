"""What a call shows in the cell: one updating stream display, the final answer, footers, errors.

Everything here writes to the notebook output; nothing here computes. (Errors a user can fix
are raised by the magics as one-line UsageErrors, never tracebacks.)
"""

from __future__ import annotations

import html
from typing import Any

from IPython.display import Markdown, display

from .generation import Result, split_thinking
from .memory import format_bytes

PREFIX = "[qwen3]"


def in_kernel() -> bool:
    """True inside a Jupyter kernel, where a display can be updated in place (a plain Python
    process would print the display object's repr instead)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class StreamView:
    """One display that is updated in place while tokens arrive, then replaced by the answer."""

    def __init__(self, think: bool, hide_thinking: bool) -> None:
        self.think = think
        self.hide_thinking = hide_thinking
        self._handle: Any = display(Markdown("*generating…*"), display_id=True)
        self._streamed = False

    def update(self, text: str) -> None:
        self._streamed = True
        thinking, answer, finished = split_thinking(text, self.think)
        self._show(render_answer(thinking, answer, finished, self.hide_thinking, streaming=True))

    def finish(self, result: Result) -> None:
        self._show(
            render_answer(
                result.thinking,
                result.answer,
                result.thinking_finished,
                self.hide_thinking,
                streaming=False,
            )
        )

    def clear(self) -> None:
        """When the call raised: empty the display if it still says `*generating…*` (left above
        the error, it would say the call is still running). Text that streamed stays: the call
        raised, so it is nowhere else (not in `_qwen3`)."""
        if not self._streamed:
            self._show("")

    def _show(self, markdown: str) -> None:
        if self._handle is not None:
            self._handle.update(Markdown(markdown))


def render_answer(
    thinking: str, answer: str, finished: bool, hide_thinking: bool, streaming: bool
) -> str:
    """Markdown for the cell: the thinking collapsed (or hidden), then the answer."""
    parts = []
    if thinking and not hide_thinking:
        label = "Thinking" if finished else "Thinking (not finished)"
        words = len(thinking.split())
        is_open = " open" if streaming and not finished else ""
        body = html.escape(thinking).replace("\n", "<br>\n")
        parts.append(
            f"<details{is_open}><summary>{label} · {words} words</summary>\n\n"
            f"<blockquote>{body}</blockquote>\n\n</details>\n"
        )
    elif thinking and hide_thinking and streaming and not answer:
        parts.append(f"*thinking… ({len(thinking.split())} words)*")
    if answer:
        parts.append(answer)
    elif not streaming and not finished:
        parts.append(
            "*No answer: the token budget ran out while thinking. Raise "
            "`--max-new-tokens` or use `--no-think`.*"
        )
    elif not streaming and not answer:
        parts.append("*(empty answer)*")
    return "\n\n".join(parts) if parts else "*generating…*"


def footer(result: Result) -> str:
    """The one-line summary printed after every call: what answered and how (engine), tokens,
    speed, time to first token, latency, and memory — what the call peaked at and freed, and
    what the engine keeps on purpose."""
    pieces = [
        f"{PREFIX} {result.model} on {result.device} ({result.engine})",
        f"{_count(result.completion_tokens, 'token')} ({result.prompt_tokens} prompt)",
        f"{result.tokens_per_s:.1f} tok/s",
    ]
    if result.time_to_first_token_s is not None:
        pieces.append(f"first token {result.time_to_first_token_s:.2f} s")
    pieces.append(f"{result.latency_s:.2f} s")
    if result.peak_memory_bytes is not None:
        pieces.append(f"peak {format_bytes(result.peak_memory_bytes)} {result.memory_kind}")
    if result.memory_freed_bytes is not None:
        pieces.append(f"freed {format_bytes(result.memory_freed_bytes)}")
    elif result.peak_memory_bytes is None and result.memory_kind:
        pieces.append(result.memory_kind)  # where the memory is when this kernel has no figure
    if result.kept_memory:
        pieces.append(result.kept_memory)
    if result.stop_reason == "interrupted":
        pieces.append("interrupted: partial answer kept")
    elif result.stop_reason == "context":
        pieces.append(
            "stopped at the served context length before --max-new-tokens (shorten the prompt; "
            "--reset clears a --chat conversation)"
        )
    elif result.stop_reason == "capped":
        pieces.append(
            "the server capped the answer below --max-new-tokens (a max_tokens limit of its own, "
            "e.g. from the model's generation config: raise it on the server)"
        )
    elif result.stop_reason == "shortened":
        pieces.append(
            "the server ended the answer before --max-new-tokens (its context length or a "
            "max_tokens limit of its own)"
        )
    elif result.stop_reason == "abort":
        pieces.append("the server aborted the answer: partial answer kept (check its log)")
    elif result.think and not result.thinking_finished:
        pieces.append("thinking not finished (raise --max-new-tokens)")
    return " · ".join(pieces)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def show_batch(results: list[Result], report: Any) -> None:
    """A table of the batch's answers, then its one-line report."""
    rows = ["| # | prompt | answer | tokens |", "|---|---|---|---|"]
    for i, r in enumerate(results):
        answer = r.answer or ("*(thinking only)*" if r.thinking else "")
        if r.error:
            answer = f"failed: {r.error}"
        rows.append(f"| {i} | {_cell(r.prompt)} | {_cell(answer)} | {r.completion_tokens} |")
    display(Markdown("\n".join(rows)))
    print(f"{PREFIX} batch · {report.summary()}", flush=True)


def _cell(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= width else flat[: width - 1] + "…"
    return html.escape(flat).replace("|", "\\|")


def show_footer(result: Result) -> None:
    print(footer(result), flush=True)


def info(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


class Status:
    """A single line that is rewritten in place (model loading, building progress)."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._last = ""

    def show(self, text: str) -> None:
        if text == self._last:
            return
        self._last = text
        if self._handle is None:
            self._handle = display(Markdown(f"*{text}*"), display_id=True)
        else:
            self._handle.update(Markdown(f"*{text}*"))

    def progress(self, what: str, done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 100
        self.show(f"{what}: {percent}%")

    def clear(self) -> None:
        """Empty the line (once: clearing an empty line sends nothing)."""
        if self._handle is not None and self._last:
            self._last = ""
            self._handle.update(Markdown(""))
