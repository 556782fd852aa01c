"""Which cell the kernel's main shell is running, from IPython's pre/post_run_cell events.

Why a class of its own: two things must know when the main shell's cell really ends — the
sidebar's Free memory (which waits for it) and the model lock's safety net (which gives back a
hold an interrupt left behind). The events do not pair simply: a cell may run cells itself
(`get_ipython().run_cell`, `run_cell_async`, which starts without ending), a subshell's cells
fire them on their own thread, and when an interrupt lands in IPython's own code between the two
events, the ending event carries a different ExecutionInfo from the starting one.
"""

from __future__ import annotations

import threading
from typing import Any


class MainCell:
    """The main shell's running cell, as pre_run_cell/post_run_cell report it."""

    def __init__(self) -> None:
        self.info: object | None = None
        """The running cell's ExecutionInfo; None between cells."""
        self._nested: list[int] = []
        """ids of the ExecutionInfos of cells the running cell started itself."""

    @property
    def running(self) -> bool:
        return self.info is not None

    def started(self, info: Any = None) -> None:
        """pre_run_cell: the main shell's cell, or one that cell runs itself."""
        if threading.current_thread() is not threading.main_thread():
            return  # a subshell's cell
        if self.info is None:
            self.info = info if info is not None else object()
        elif info is not None:
            self._nested.append(id(info))

    def ended(self, result: Any = None) -> bool:
        """post_run_cell; True when it ended the main shell's cell (not a nested one, not a
        subshell's). An ending that matches no started nested cell ends the main one."""
        if self.info is None or threading.current_thread() is not threading.main_thread():
            return False
        info = getattr(result, "info", None)
        if info is not None and id(info) in self._nested:
            self._nested.remove(id(info))
            return False
        self.info = None
        self._nested.clear()
        return True
