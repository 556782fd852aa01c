"""What a call shows in the cell: one updating stream display, the final answer, footers, errors.

Everything here writes to the notebook output; nothing here computes. (Errors a user can fix
are raised by the magics as one-line UsageErrors, never tracebacks.)
"""

from __future__ import annotations

import html
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from IPython.display import display

from .generation import Result, split_thinking
from .hub_progress import progress_text
from .markdown_text import as_typed, dollars_escaped_in_html, escape_html, escape_inline
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


def running_request() -> dict[str, Any] | None:
    """The kernel's running execute request (its header and metadata), {} while the kernel
    starts; None outside a kernel or with an ipykernel without `get_parent`."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        return None if kernel is None else (kernel.get_parent("shell") or {})
    except Exception:
        return None


def in_a_cell() -> bool:
    """False while a kernel starts (its config's extensions and exec_lines), where what is
    shown reaches no cell and is lost; True in a cell, and outside a kernel (a terminal shows
    what its startup prints)."""
    request = running_request()
    return request is None or bool((request.get("header") or {}).get("msg_id"))


@contextmanager
def shown_in_the_starting_cell() -> Iterator[None]:
    """In a thread other than the main one, what the block shows goes to the cell that was
    running when it began. ipykernel sends a thread's output to whichever cell runs when it is
    sent: a batch started in a thread, whose first display came 3 s later (importing torch),
    put its progress, its load line and its summary under the next cell the user ran. Where
    ipykernel cannot pin a thread's output (before 7), it goes where it went."""
    import threading

    from IPython import get_ipython

    shell = get_ipython()
    if threading.current_thread() is threading.main_thread() or shell is None:
        yield
        return
    pinned: list[tuple[Any, Any]] = []
    targets: tuple[Any, ...] = (getattr(shell, "display_pub", None), sys.stdout, sys.stderr)
    for target in targets:
        pin = getattr(target, "set_thread_parent", None)
        header = getattr(target, "parent_header", None)
        if pin is not None and header:
            pinned.append((target, pin(header)))
    try:
        yield
    finally:
        for target, token in pinned:
            target.reset_thread_parent(token)


def captured() -> bool:
    """True inside IPython's `%%capture` (or `capture_output()`): there every update of a
    display is kept as an output of its own — a 400-token answer streamed into 234 outputs,
    380 KB, growing with the square of its length — and nobody watches them stream."""
    try:
        from IPython import get_ipython
        from IPython.core.displaypub import CapturingDisplayPublisher
    except ImportError:
        return False
    shell = get_ipython()
    return isinstance(getattr(shell, "display_pub", None), CapturingDisplayPublisher)


def show_markdown(markdown: str, plain: str | None = None) -> Any:
    """Display `markdown` with a plain-text form (`markdown` itself unless given), returning
    the handle that updates it. `Markdown(...)` had none: front ends without Markdown (a
    console, nbconvert to text) showed `<IPython.core.display.Markdown object>`."""
    return display(_bundle(markdown, plain), raw=True, display_id=True)


def update_markdown(handle: Any, markdown: str, plain: str | None = None) -> None:
    handle.update(_bundle(markdown, plain), raw=True)


def _bundle(markdown: str, plain: str | None) -> dict[str, str]:
    return {"text/markdown": markdown, "text/plain": markdown if plain is None else plain}


class StreamView:
    """One display that is updated in place while tokens arrive, then replaced by the answer.

    Given the call's `Status`, the view takes over its display (a line that said "loading…"
    becomes the answer) and shows the status lines that come while it streams under the text
    so far ("compiling the decode step…", which the fast path does after the first token): one
    output per call. An emptied status line of its own stayed in the saved notebook as an
    empty output."""

    PLACEHOLDER = "*generating…*"

    def __init__(self, think: bool, hide_thinking: bool, status: Status | None = None) -> None:
        self.think = think
        self.hide_thinking = hide_thinking
        self._streamed = False
        self._ended = False
        self._body = self.PLACEHOLDER
        self._plain = self.PLACEHOLDER.strip("*")
        self._line: str | None = None
        self._live = in_kernel() and not captured()
        """False in a terminal IPython, which prints every update of a display anew, and under
        `%%capture`, which keeps each one: there the view shows only the final answer, once."""
        self._handle: Any = status.hand_over(self) if status is not None else None
        if self._handle is None:
            if self._live:
                self._handle = show_markdown(self._body, self._plain)
        elif self._live:
            self._render()

    def show_line(self, text: str | None) -> bool:
        """Show a status line in the display (None: remove it) while the call runs; False once
        it has ended (the display is the final answer's)."""
        if self._ended:
            return False
        if text != self._line:
            self._line = text
            self._render()
        return True

    def update(self, text: str) -> None:
        self._streamed = True
        if not self._live:
            return
        thinking, answer, finished = split_thinking(text, self.think)
        self._body, self._plain = render(thinking, answer, finished, self.hide_thinking, True)
        self._render()

    def finish(self, result: Result) -> None:
        self._ended = True
        self._line = None
        self._body, self._plain = render(
            result.thinking,
            result.answer,
            result.thinking_finished,
            self.hide_thinking,
            False,
            result.stop_reason,
        )
        if self._handle is None:
            self._handle = show_markdown(self._body, self._plain)
        else:
            self._render()

    STOPPED = "*stopped before the first token*"

    def clear(self) -> None:
        """When the call raised: replace `*generating…*` (left above the error, it would say
        the call is still running; emptied, it stayed in the saved notebook as an empty
        output). Text that streamed stays: the call raised, so it is nowhere else (not in
        `_qwen3`)."""
        self._ended = True
        self._line = None
        if not self._streamed:
            self._body, self._plain = self.STOPPED, self.STOPPED.strip("*")
        self._render()

    def _render(self) -> None:
        markdown, plain = self._body, self._plain
        if self._line:
            status = _italic(self._line)
            markdown = status if not self._streamed else f"{markdown}\n\n{status}"
            plain = self._line if not self._streamed else f"{plain}\n\n{self._line}"
        if self._handle is not None:
            update_markdown(self._handle, markdown, plain)


def render(
    thinking: str,
    answer: str,
    finished: bool,
    hide_thinking: bool,
    streaming: bool,
    stop_reason: str = "length",
) -> tuple[str, str]:
    """Markdown for the cell — the thinking collapsed (or hidden), then the answer (its raw
    HTML shown as typed, `markdown_text`) — and the same as plain text, for front ends that
    show no Markdown (`jupyter console`, a notebook converted to text: they showed
    `<IPython.core.display.Markdown object>`)."""
    markdown, plain = [], []
    thinking = _LINE_END.sub("\n", thinking)  # a lone \r: Markdown's line end, not Python's
    words = _count(len(thinking.split()), "word")
    if thinking and not hide_thinking and streaming and not finished:
        markdown.append(
            f"*Thinking… · {words}*\n\n<blockquote>{_quoted(_tail(thinking))}</blockquote>\n"
        )
        plain.append(f"[thinking… · {words}]\n{thinking}")
    elif thinking and not hide_thinking:
        label = "Thinking" if finished else "Thinking (not finished)"
        markdown.append(
            f"<details><summary>{label} · {words}</summary>\n\n"
            f"<blockquote>{_quoted(thinking)}</blockquote>\n\n</details>\n"
        )
        plain.append(f"[{label.lower()} · {words}]\n{thinking}\n[end of thinking]")
    elif thinking and hide_thinking and streaming and not answer:
        markdown.append(f"*thinking… ({words})*")
        plain.append(f"thinking… ({words})")
    note = _missing_answer(answer, finished, streaming, stop_reason)
    markdown.append(escape_html(answer) if answer else f"*{note}*" if note else "")
    plain.append(answer or note)
    return (
        "\n\n".join(p for p in markdown if p) or "*generating…*",
        "\n\n".join(p for p in plain if p) or "generating…",
    )


_LINE_END = re.compile(r"\r\n?")
"""A lone `\r` ends a line for Markdown: two of them in the thinking made a blank line, which
ended its raw-HTML block, and the rest was read as Markdown (an image in it was fetched)."""

THINKING_TAIL_CHARACTERS = 600
THINKING_TAIL_LINES = 8
"""How much of the thinking shows while it streams: its end, a few lines. Why: it was shown
whole in an open <details>, rewritten at every update, so a click could not collapse it (the
next update opened it again) and a real Qwen3's 1-2k words of thinking filled several screens,
then snapped shut to one line when the answer began. Finished, it is all there, collapsed."""


def _tail(thinking: str) -> str:
    """The end of `thinking`: its last THINKING_TAIL_LINES lines and THINKING_TAIL_CHARACTERS
    characters at most, from a word's start, with "…" where it was cut."""
    lines = thinking.rstrip().split("\n")
    tail = "\n".join(lines[-THINKING_TAIL_LINES:])
    if len(tail) > THINKING_TAIL_CHARACTERS:
        tail = tail[-THINKING_TAIL_CHARACTERS:]
        tail = tail.split(" ", 1)[1] if " " in tail[:40] else tail
    return tail if tail == thinking.rstrip() else f"… {tail.lstrip()}"


def _quoted(text: str) -> str:
    """`text` as a blockquote's HTML body: escaped, its line breaks kept, and its dollar signs
    outside math shown as typed (a price in the thinking was typeset as MathJax italics)."""
    return dollars_escaped_in_html(html.escape(text)).replace("\n", "<br>\n")


def _italic(line: str) -> str:
    """A status line as italic Markdown that shows it as typed: it can name what a server sent
    (a model's name), which as Markdown could draw HTML."""
    return f"*{as_typed(line)}*"


def _missing_answer(answer: str, finished: bool, streaming: bool, stop_reason: str) -> str:
    """What the final view says instead of an answer that is not there, by why the call ended:
    an interrupt or a server's stop is not a budget to raise."""
    if answer or streaming:
        return ""
    if finished:
        return "(empty answer)"
    if stop_reason == "length":
        return (
            "No answer: the token budget ran out while thinking. Raise `--max-new-tokens` or use "
            "`--no-think`."
        )
    if stop_reason == "interrupted":
        return "No answer: stopped while thinking (the thinking so far is kept in _qwen3)."
    if stop_reason == "eos":
        return "No answer: the model ended while thinking."
    return "No answer: the server ended the answer while thinking (the line below says why)."


def _prompt_size(result: Result) -> str:
    """ " (9 prompt)"; nothing for a server that sent no usage figures (an interrupt, an aborted
    answer, a server that never sends them): "(0 prompt)" read as a real count."""
    if result.engine == "remote" and not result.prompt_tokens:
        return ""
    return f" ({result.prompt_tokens} prompt)"


def kept_part(result: Result) -> str:
    """What an interrupted call kept: "answer", or "thinking" when it stopped before answering
    (the footer said "partial answer kept" under "No answer: stopped while thinking")."""
    return "thinking" if result.thinking and not result.answer else "answer"


def footer(result: Result, advice: bool = True) -> str:
    """The one-line summary printed after every call: what answered and how (engine), tokens,
    speed, time to first token, latency, and memory — what the call peaked at and freed, and
    what the engine keeps on purpose. `advice`: whether a thought cut short says what
    to raise (a magic's answer display says it already)"""
    pieces = [
        f"{PREFIX} {result.model} on {result.device} ({result.engine})",
        _count(result.completion_tokens, "token") + _prompt_size(result),
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
    if result.stop_reason == "interrupted" and not result.completion_tokens:
        pieces.append("interrupted before the first token")  # nothing to keep
    elif result.stop_reason == "interrupted":
        pieces.append(f"interrupted: partial {kept_part(result)} kept")
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
        unfinished = "thinking not finished" + (" (raise --max-new-tokens)" if advice else "")
        pieces.append(
            unfinished if result.stop_reason == "length" else "the model ended while thinking"
        )
    elif result.stop_reason == "length":  # whitespace only too: the budget, not the model
        pieces.append("answer cut off at --max-new-tokens (raise it for the rest)")
    return " · ".join(pieces)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def show_batch(results: list[Result], report: Any, line: Status | None = None) -> None:
    """A table of the batch's answers (in `line`'s display, where the call had one), then its
    one-line report."""
    header = ["| # | prompt | answer | tokens |", "|---|---|---|---|"]
    rows, plain_rows = list(header), list(header)
    positions = getattr(results, "indices", range(len(results)))  # a stopped server batch: gaps
    for i, r in zip(positions, results, strict=True):
        answer = f"failed: {r.error}" if r.error else r.answer
        thinking_only = not answer and bool(r.thinking)
        answer = "(thinking only)" if thinking_only else answer
        shown = "*(thinking only)*" if thinking_only else _cell(answer, escape_inline)
        rows.append(f"| {i} | {_cell(r.prompt, as_typed)} | {shown} | {r.completion_tokens} |")
        plain = f"| {i} | {_cell(r.prompt)} | {_cell(answer)} |"
        plain_rows.append(f"{plain} {r.completion_tokens} |")
    # The plain form unescaped: "Use a &lt;div&gt;" was what text front ends and exports read.
    table, plain_table = "\n".join(rows), "\n".join(plain_rows)
    if line is not None:
        line.settle(table, plain_table)
    else:
        show_markdown(table, plain_table)
    print(f"{PREFIX} batch · {report.summary()}", flush=True)


def _cell(text: str, markdown: Callable[[str], str] | None = None, width: int = 60) -> str:
    """`text` on one line, cut at `width`, as a table cell: for the Markdown renderer through
    `markdown` (an answer's `<div>` was drawn, a prompt's "$40 … $55" typeset as maths), as
    written in the plain form."""
    flat = " ".join(text.split())
    flat = flat if len(flat) <= width else flat[: width - 1] + "…"
    shown = flat if markdown is None else markdown(flat)
    return _UNESCAPED_PIPE.sub(lambda pipe: pipe.group(1) + "\\|", shown)


_UNESCAPED_PIPE = re.compile(r"(?<!\\)((?:\\\\)*)\|")
"""A `|` not already escaped (an even run of backslashes before it): a text's own `\\|` made
`\\\\|`, whose pipe split the table's cell."""


def show_footer(result: Result) -> None:
    """A magic's footer, under the answer's display, which already says what to raise for a
    thought cut short ("No answer: the token budget ran out while thinking. Raise …"): the
    footer's own "(raise --max-new-tokens)" said it a second time."""
    print(footer(result, advice=False), flush=True)


def info(message: str, python_call: bool = False) -> None:
    """One `[qwen3]` line: in the cell's output, or a terminal IPython's beside a magic's other
    lines; a Python call's (`python_call`) outside a kernel, and any in a plain Python script,
    on stderr with the progress lines, so `python job.py > answers.csv` (or `ipython job.py`)
    gets only what the script printed (the load notice went into the file)."""
    to_stdout = in_kernel() or (_in_ipython() and not python_call)
    print(f"{PREFIX} {message}", file=sys.stdout if to_stdout else sys.stderr, flush=True)


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class Status:
    """A single line that is rewritten in place (model loading, building progress).

    Once a `StreamView` has taken its display (`hand_over`), the line shows in the view while
    the call runs; a line after the view's call has ended gets a display of its own again."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._last = ""
        self._said = ""
        """The last thing the line said in its own display (`end` of a failed call keeps it)."""
        self._view: StreamView | None = None
        self._console = None if in_kernel() else ConsoleLine()
        """A terminal IPython's line, on stderr: there every update of a display is printed
        anew, and loading a model printed 28 lines of percentages, then an empty one."""

    def show(self, text: str) -> None:
        if text == self._last:
            return
        if self._console is not None:
            self._last = self._said = text
            self._console.show(text)
            return
        self._last = text
        self._said = text
        if self._view is not None and self._view.show_line(text):
            return
        if self._handle is None:
            self._handle = show_markdown(_italic(text), text)
        else:
            update_markdown(self._handle, _italic(text), text)

    def progress(self, what: str, done: int, total: int) -> None:
        if self._console is not None:
            self._console.progress(what, done, total)
        else:
            self.show(progress_text(what, done, total))

    @property
    def has_display(self) -> bool:
        """Whether the line shows in a display of its own (which `end` must not leave empty)."""
        return self._handle is not None

    def clear(self) -> None:
        """Empty the line (once: clearing an empty line sends nothing)."""
        if not self._last:
            return
        self._last = ""
        if self._console is not None:
            self._console.end()
            return
        if self._view is not None and self._view.show_line(None):
            return  # the line was in the view's display (an ended view has none)
        if self._handle is not None:
            update_markdown(self._handle, "")

    def end(self, lines: Sequence[str] = (), failed: bool = False) -> None:
        """End the call's line. Its closing `lines` (notices, a summary) take the line's own
        display where it has one — emptied, that display stayed in the saved notebook as an
        empty output — else go to stdout. A failed call with nothing to say leaves what the
        line last said, marked stopped, above its error."""
        if self._console is not None:
            self._console.end(failed)
            self._last = ""
        if self._handle is None or not (lines or (failed and self._said)):
            self.clear()
            for line in lines:
                info(line)
            return
        if lines:
            text = "\n".join(f"{PREFIX} {line}" for line in lines)
            self._handle.update({"text/plain": text}, raw=True)  # as it would print
        else:
            update_markdown(
                self._handle, f"{_italic(self._said)} — stopped", f"{self._said} — stopped"
            )
        self._handle = None
        self._last = ""

    def hand_over(self, view: StreamView) -> Any:
        """Give this line's display (None if it never showed) to `view`, whose display the
        line uses from now on."""
        handle, self._handle = self._handle, None
        self._view = view
        self._last = self._said = ""  # what the line said is the view's to replace
        return handle

    def settle(self, markdown: str, plain: str | None = None) -> None:
        """Show `markdown` (and its `plain` form) in this line's display for good (a batch's
        table): the display the call's progress used becomes its result, not an emptied line
        beside it."""
        if self._handle is None:
            show_markdown(markdown, plain)
        else:
            update_markdown(self._handle, markdown, plain)
            self._handle = None
        self._last = ""


class ConsoleLine:
    """A script's (no kernel) status line, on stderr: what `Status` shows in a cell.

    Why: outside a kernel a call that built or loaded a model said nothing for as long as that
    took (45 s for `random:Qwen3-1.7B`). On a terminal the line is rewritten in place (at most
    every TTY_INTERVAL_S) and cleared when the call is done with it; into a file or a pipe it
    writes whole lines, at most one every LOG_INTERVAL_S besides each step's first and last,
    so a log gets the steps and not a flood of percentages."""

    TTY_INTERVAL_S = 0.1
    LOG_INTERVAL_S = 5.0

    def __init__(self) -> None:
        self._stream = sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._last = ""
        self._what = ""
        self._shown_at = float("-inf")
        self._open = False
        """A terminal line is on screen, not yet ended by a newline."""

    def progress(self, what: str, done: int, total: int) -> None:
        step_starts, step_ends = what != self._what, done >= total
        self._what = what
        self.show(progress_text(what, done, total), force=step_starts or step_ends)

    def show(self, text: str, force: bool = False) -> None:
        interval = self.TTY_INTERVAL_S if self._tty else self.LOG_INTERVAL_S
        now = time.monotonic()
        if text == self._last or (not force and now - self._shown_at < interval):
            return
        self._last, self._shown_at = text, now
        if self._tty:
            self._write(f"\r{PREFIX} {text}\x1b[K")
            self._open = True
        else:
            self._write(f"{PREFIX} {text}\n")

    def end(self, failed: bool = False) -> None:
        """Done with the line: a terminal's is cleared, or kept, marked stopped, when the call
        failed (as a cell's line is)."""
        if self._open:
            self._write(" — stopped\n" if failed else "\r\x1b[K")
        self._open = False
        self._last = self._what = ""

    def keep(self) -> None:
        """Done with the line, which stays as it is: a terminal's ends with a newline (a file's
        lines have theirs)."""
        if self._open:
            self._write("\n")
        self._open = False
        self._last = self._what = ""

    def _write(self, text: str) -> None:
        if self._stream is None:  # no stderr at all (`2>&-`, pythonw): nowhere to say it
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except Exception:  # a closed or broken stderr: progress must never fail a load
            pass


_CALL_LINE: ContextVar[Status | None] = ContextVar("qwen3_call_line", default=None)


@contextmanager
def call_line(status: Status | None) -> Iterator[None]:
    """Make `status` the line of the call running in this context: a batch's progress shows
    there (`current_line`) instead of in a second display, which the saved notebook kept as an
    empty output once both were cleared."""
    token = _CALL_LINE.set(status)
    try:
        yield
    finally:
        _CALL_LINE.reset(token)


def current_line() -> Status:
    """The running call's line (`call_line`), else a new one."""
    return _CALL_LINE.get() or Status()
