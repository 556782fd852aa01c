"""A batch's progress: one line rewritten in place in a kernel, the script's status line
(`display.ConsoleLine`) elsewhere.

Why not tqdm's notebook bar: it is 11 ipywidgets models a call, and tqdm keeps them after the
bar closes (closing them would blank the finished bar), so every batch left 11 more widget
models alive in the kernel and in the browser — creep of the kind this package exists to
remove — and a notebook run headless keeps them as widget views no viewer can show. A display
line rewritten in place (the magics' status line) needs no widget at all. Nor its text bar in a
script: into a log file it wrote every redraw after a carriage return, one line of thousands of
characters that `tail -f` never finished; the status line writes a line every few seconds there.
"""

from __future__ import annotations

import time

from . import display

UPDATE_INTERVAL_S = 0.25
"""At most four rewrites a second: a server batch can finish hundreds of prompts a second, and
each rewrite is a message the browser must render."""


class BatchProgress:
    """`what: 5/12 prompts · batch size 2 · 3.1 s, about 4 s left`, for `total` prompts."""

    def __init__(self, total: int, what: str, enabled: bool = True) -> None:
        self.total = total
        self.what = what
        self.done = 0
        self.detail = ""
        self._started = time.perf_counter()
        self._shown_at = float("-inf")
        self._line: display.Status | None = None
        self._console: display.ConsoleLine | None = None
        if not enabled:
            return
        if display.in_kernel():
            self._line = display.current_line()
        else:
            self._console = display.ConsoleLine()  # on stderr: a terminal's line, a log's lines
        self._show(force=True)

    def advance(self, count: int = 1) -> None:
        """`count` more prompts finished."""
        self.done += count
        self._show(force=self.done >= self.total)

    def tick(self) -> None:
        """Rewrite the elapsed time (at most every UPDATE_INTERVAL_S) while nothing finishes."""
        self._show(force=False)

    def note(self, detail: str) -> None:
        """What the line adds after the count ("batch size 2 after out of memory", "1 failed")."""
        if detail == self.detail:
            return
        self.detail = detail
        self._show(force=True)

    def close(self) -> None:
        """Clear a cell's line (the caller reports the batch as a whole); a script's last line
        stays, the count it reached (nothing else says how the batch went there)."""
        if self._line is not None:
            self._line.clear()
            self._line = None
        if self._console is not None:
            self._console.show(self._console_text(), force=True)
            self._console.keep()
            self._console = None

    def text(self) -> str:
        elapsed = time.perf_counter() - self._started
        pieces = [f"{self.what}: {self.done}/{self.total} prompts"]
        if self.detail:
            pieces.append(self.detail)
        timing = seconds(elapsed)
        if 0 < self.done < self.total:
            timing += f", about {seconds(elapsed / self.done * (self.total - self.done))} left"
        pieces.append(timing)
        return " · ".join(pieces)

    def _console_text(self) -> str:
        """The text after the script line's own "[qwen3]": "batch: 5/12 prompts · …"."""
        return self.text().removeprefix("qwen3 ")

    def _show(self, force: bool) -> None:
        if self._console is not None:
            self._console.show(self._console_text(), force)  # paced by the line itself
            return
        if self._line is None:
            return
        now = time.perf_counter()
        if force or now - self._shown_at >= UPDATE_INTERVAL_S:
            self._shown_at = now
            self._line.show(self.text())


def seconds(value: float) -> str:
    """'3.1 s', '42 s', '2 min 05 s', '1 h 02 min': as precise as a person reading a progress
    line wants."""
    if round(value, 1) < 10:
        return f"{value:.1f} s"
    if round(value) < 60:
        return f"{value:.0f} s"
    minutes, rest = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(round(value / 60), 60)
    return f"{hours} h {minutes:02d} min"
