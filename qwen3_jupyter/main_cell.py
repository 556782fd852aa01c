"""Which cell the kernel's main shell is running, from IPython's pre/post_run_cell events.

Why a class of its own: the sidebar's Free memory waits for the main shell's cell to end, and the
events alone do not say which cell is the main one: a cell may run cells itself
(`get_ipython().run_cell`, `run_cell_async`, a blank one that ends without starting), a
subshell's cells fire them on their own thread, and an interrupt can cost a cell its ending
event. The stack says it: the main cell's pre_run_cell fires inside one `run_cell_async`, its
post_run_cell outside any; a nested cell's events fire inside more.
"""

from __future__ import annotations

import sys
import threading
from typing import Any


def _run_cell_code() -> Any:
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.run_cell_async.__code__


def cells_on_stack() -> int:
    """How many IPython cells the main thread is inside (frames of `run_cell_async`)."""
    code, count = _run_cell_code(), 0
    frame: Any = sys._getframe(1)
    while frame is not None:
        count += frame.f_code is code
        frame = frame.f_back
    return count


class MainCell:
    """The main shell's running cell, as pre_run_cell/post_run_cell report it."""

    def __init__(self) -> None:
        self.running = False

    def started(self, info: Any = None) -> None:
        """pre_run_cell: the main shell's cell starts (not one it runs, not a subshell's)."""
        if threading.current_thread() is threading.main_thread() and cells_on_stack() <= 1:
            self.running = True

    def ended(self, result: Any = None) -> bool:
        """post_run_cell; True when it ended the main shell's cell."""
        if threading.current_thread() is not threading.main_thread() or cells_on_stack():
            return False  # a subshell's cell, or one the running cell ran itself
        self.running = False
        return True
