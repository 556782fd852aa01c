"""What a Python API call (`generate_batch`, `inference()`) shows in its own cell.

Why: engines leave one-line notices ("compiled the decode step … in 9.9 s", "fast decode
failed …; decoding eagerly") in the session, and the magics print them when a call ends. Calls
made from Python must do the same, or the notices surface in some later, unrelated `%qwen3` cell
and the call that waited 15 s for a compile said nothing about why. In a kernel they also get
the magics' transient status line (loading the model, compiling the decode step), cleared when
the call ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import display
from .session import SESSION


class ApiCall:
    """One API call's status line (None outside a kernel or when asked for no progress)."""

    def __init__(self, show_status: bool) -> None:
        self.status = display.Status() if show_status and _in_kernel() else None

    def engine(self, **choice: str | None) -> Any:
        """`SESSION.engine(**choice)` (model, device, dtype, decode, server), its loading
        progress on this call's line."""
        return SESSION.engine(**choice, progress=self.progress)

    def progress(self, what: str, done: int, total: int) -> None:
        """Model loading progress, for `SESSION.engine(progress=...)`."""
        if self.status is not None:
            self.status.progress(what, done, total)

    @contextmanager
    def watching(self, engine: Any) -> Iterator[None]:
        """Let `engine` write its own progress ("compiling the decode step…") to the line."""
        if self.status is None:
            yield
            return
        engine.status = self.status.show
        try:
            yield
        finally:
            engine.status = None

    def end(self) -> None:
        if self.status is not None:
            self.status.clear()
        for notice in SESSION.take_notices():
            display.info(notice)


@contextmanager
def api_call(show_status: bool = True) -> Iterator[ApiCall]:
    """Run an API call; at its end (also on an error or an interrupt) clear its status line
    and print the notices its engines left."""
    call = ApiCall(show_status)
    try:
        yield call
    finally:
        call.end()


def _in_kernel() -> bool:
    """True inside a Jupyter kernel, where a display can be updated in place (a plain Python
    process would print the display object's repr instead)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
