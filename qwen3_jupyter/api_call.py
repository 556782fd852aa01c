"""What a Python API call (`generate_batch`, `inference()`) shows in its own cell.

Why: engines leave one-line notices ("compiled the decode step … in 9.9 s", "fast decode
failed …; decoding eagerly") in the session, and the magics print them when a call ends. Calls
made from Python must do the same, or the notices surface in some later, unrelated `%qwen3` cell
and the call that waited 15 s for a compile said nothing about why. In a kernel they also get
the magics' transient status line (loading the model, compiling the decode step), cleared when
the call ends.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import display
from .interrupts import CELL_INTERRUPTS, interrupts_caught
from .python_words import in_python_words
from .refusals import raised_here
from .session import SESSION


class ApiCall:
    """One API call's status line (None outside a kernel or when asked for no progress), or
    outside a kernel its model loading's line on stderr (`console`)."""

    def __init__(self, show_status: bool) -> None:
        in_kernel = display.in_kernel()
        self.status = display.Status() if show_status and in_kernel else None
        self.console = display.ConsoleLine() if show_status and not in_kernel else None
        self.notices: list[str] = []
        """This call's own one-line notices, printed after the engines' at its end."""
        self.closing: str | None = None
        """What the call's line ends with when it showed a display and has no notice to put
        there (a chat's footer): emptied, the display stayed in the saved notebook as an empty
        output ("waiting for the first token…" of each chat with a server)."""

    def notify(self, notice: str) -> None:
        """Say `notice` when the call ends (an interrupt that ended it early, say: the cell
        would otherwise end "ok" with no sign that the results are partial)."""
        self.notices.append(notice)

    def engine(self, **choice: str | None) -> Any:
        """`SESSION.engine(**choice)` (model, device, dtype, decode, server), with `%config
        Qwen3Magics.*` filling in what neither the arguments nor the environment say (the
        magic's order), its loading progress on this call's line. Outside a kernel what the
        load said ("loaded tiny … random weights") is printed at once: held to the call's end,
        an overnight batch said it in the morning, or never when the job was killed."""
        config = configured()
        failed = True
        try:
            engine = SESSION.engine(
                **choice,
                configured_model=config.get("model"),
                configured_device=config.get("device"),
                configured_dtype=config.get("dtype"),
                configured_decode=config.get("decode"),
                configured_server=config.get("server"),
                progress=self.progress,
            )
            failed = False
        finally:
            if self.console is not None:  # before a batch's own bar takes stderr
                self.console.end(failed)
        if not display.in_kernel():  # a script's log gets them now, not after the batch
            for notice in SESSION.take_notices():
                display.info(in_python_words(notice), python_call=True)
        return engine

    def progress(self, what: str, done: int, total: int) -> None:
        """Model loading progress, for `SESSION.engine(progress=...)`."""
        if self.status is not None:
            self.status.progress(what, done, total)
        elif self.console is not None:
            self.console.progress(what, done, total)

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

    def end(self, failed: bool = False) -> None:
        """Say the call's notices: in its line's display where it showed one (see
        `Status.end`), else on stdout."""
        notices = [in_python_words(n) for n in (*SESSION.take_notices(), *self.notices)]
        if self.console is not None:
            self.console.end(failed)
        if self.status is not None:
            if not notices and not failed and self.closing and self.status.has_display:
                notices = [self.closing]
            self.status.end(notices, failed)
        else:
            for notice in notices:
                display.info(notice, python_call=True)


CONFIGURED = ("model", "device", "dtype", "decode", "server")
"""The Qwen3Magics options the Python API honours as the magic does."""


def configured() -> dict[str, str | None]:
    """The `%config Qwen3Magics.*` (or `c.Qwen3Magics.*`) values of this kernel's loaded
    extension, by name; None where unset. Empty without IPython or without the extension loaded:
    the caller then has the argument, the environment and the default, as before.

    Why: the API called `SESSION.engine` with no configuration, so with `Qwen3Magics.model =
    "tiny"` generate_batch loaded the default model, and with `Qwen3Magics.server` set it ran on
    the local model instead of the server."""
    ipython = sys.modules.get("IPython")  # never imported here: without it there is no shell
    shell = ipython.get_ipython() if ipython is not None else None
    manager = getattr(shell, "magics_manager", None)
    magics = getattr(manager, "registry", {}).get("Qwen3Magics")
    if magics is None:
        return {}
    values: dict[str, str | None] = {}
    for name in CONFIGURED:
        value = getattr(magics, name, None)
        values[name] = (value.strip() or None) if isinstance(value, str) else None
    return values


@contextmanager
def api_call(show_status: bool = True) -> Iterator[ApiCall]:
    """Run an API call; at its end (also on an error or an interrupt) clear its status line
    and print the notices its engines left."""
    with display.shown_in_the_starting_cell():  # a call in a thread: its own cell's output
        call = ApiCall(show_status)
        failed = True
        try:
            with display.call_line(call.status):  # a batch's progress shows in this call's line
                yield call
            failed = False
        except Exception as exc:
            reword_for_python(exc)
            raise
        finally:
            with interrupts_caught() as late:  # printing the notices waits on kernel output
                call.end(failed)
            if late:  # the stop it always is, without losing what the call returns
                CELL_INTERRUPTS.note(True)


def reword_for_python(exc: BaseException) -> None:
    """Reword `exc` in place with the argument names a Python caller typed: the layers below
    word their errors for the magic's flags (`--max-new-tokens 99,999,999 exceeds ...`), which
    a caller of chat() or generate_batch() never wrote. The exception keeps its type and
    attributes (a GenerationOOM's `.results`). Only this package's own errors: one raised in
    the caller's `on_text`, or inside torch, keeps its words."""
    if not raised_here(exc):
        return
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (in_python_words(exc.args[0]), *exc.args[1:])
    hint = getattr(exc, "hint", None)
    if isinstance(hint, str) and hint:
        exc.hint = in_python_words(hint)  # type: ignore[attr-defined]
