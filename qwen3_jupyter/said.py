"""The one line an action returns (`stop()`, `reset_chat()`).

Why: it is a str, so a script prints it and code compares it, but a notebook showed it quoted
like data (`'conversation cleared (2 turns)'`) where the magic (`%qwen3 --reset`) prints the
line. IPython shows a `Said` as the line itself; `repr()` stays a str's.
"""

from __future__ import annotations

from typing import Any


class Said(str):
    """A str that IPython shows unquoted, as the sentence it is."""

    __slots__ = ()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))
