"""A batch's progress: one line rewritten in place in a kernel, tqdm's text bar elsewhere.

Why not tqdm's notebook bar: it is 11 ipywidgets models a call, and tqdm keeps them after the
bar closes (closing them would blank the finished bar), so every batch left 11 more widget
models alive in the kernel and in the browser — creep of the kind this package exists to
remove — and a notebook run headless keeps them as widget views no viewer can show. A display
line rewritten in place (the magics' status line) needs no widget at all.
"""

from __future__ import annotations

import time
from typing import Any

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
        self._bar: Any = None
        if not enabled:
            return
        if display.in_kernel():
            self._line = display.current_line()
            self._show(force=True)
        else:
            from tqdm import tqdm  # the terminal's text bar, on stderr

            self._bar = tqdm(total=total, desc=what, unit="prompt")

    def advance(self, count: int = 1) -> None:
        """`count` more prompts finished."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        self._show(force=self.done >= self.total)

    def tick(self) -> None:
        """Rewrite the elapsed time (at most every UPDATE_INTERVAL_S) while nothing finishes."""
        self._show(force=False)

    def note(self, detail: str) -> None:
        """What the line adds after the count ("batch size 2 after out of memory", "1 failed")."""
        if detail == self.detail:
            return
        self.detail = detail
        if self._bar is not None:
            self._bar.set_postfix_str(detail)
        self._show(force=True)

    def close(self) -> None:
        """Clear the line (the caller reports the batch as a whole) or end the text bar."""
        if self._line is not None:
            self._line.clear()
            self._line = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

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

    def _show(self, force: bool) -> None:
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
