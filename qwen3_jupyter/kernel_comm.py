"""Kernel side of the sidebar's "Free memory" button: the `qwen3_jupyter` comm target.

Loading the extension registers the target and writes a marker file next to the kernel's
connection file, which is how the server tells "qwen3_jupyter is loaded in this kernel" without
sending the kernel anything. The sidebar opens a comm with `{"action": "cleanup"}`; the kernel
runs `cleanup()` and answers with the report. It runs only on the main shell, between cells
(never on a subshell beside a running cell; a request that arrives while a cell awaits runs when
that cell ends), and only that action exists: a comm never runs code it was sent. Unloading
removes both.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, lifecycle

TARGET = "qwen3_jupyter"
MARKER_SUFFIX = ".qwen3-jupyter.json"
"""The marker sits at `<connection file stem>.qwen3-jupyter.json`; the server reads it."""

_log = logging.getLogger(__name__)


def _comm_manager(ip: Any) -> Any | None:
    """The kernel's comm manager; None outside a kernel (plain IPython has no comms)."""
    kernel = getattr(ip, "kernel", None)
    if kernel is None:
        return None
    manager = getattr(kernel, "comm_manager", None)
    if manager is not None:
        return manager
    try:
        import comm

        return comm.get_comm_manager()
    except Exception:
        return None


def marker_path() -> Path | None:
    """Marker next to this kernel's connection file; None when the kernel has no such file."""
    try:
        from ipykernel.connect import get_connection_file

        connection_file = Path(get_connection_file())
    except Exception:
        return None
    return connection_file.with_name(connection_file.stem + MARKER_SUFFIX)


def write_marker(path: Path) -> bool:
    """Say "loaded" to the server; True when written (a read-only runtime dir is not an error)."""
    data = {"pid": os.getpid(), "comm_target": TARGET, "version": __version__}
    try:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        _log.debug("qwen3_jupyter: could not write %s: %s", path, exc)
        return False
    return True


def remove_stale_markers(folder: Path) -> int:
    """Remove the markers of kernels that are gone: their connection file was removed and no
    process has their PID. Why: a kernel that is killed (the OOM killer, `kill -9`, a crashed
    server) cannot remove its own, and they piled up in Jupyter's runtime folder, one per dead
    kernel. Returns how many were removed."""
    import psutil

    removed = 0
    try:
        markers = list(folder.glob("*" + MARKER_SUFFIX))
    except OSError:
        return 0
    for marker in markers:
        connection_file = marker.with_name(marker.name[: -len(MARKER_SUFFIX)] + ".json")
        try:
            if connection_file.exists():
                continue  # its kernel may run, or be restarted on that file
            pid = json.loads(marker.read_text()).get("pid")
            if isinstance(pid, int) and psutil.pid_exists(pid):
                continue
            marker.unlink()
            removed += 1
        except (OSError, ValueError, AttributeError):
            continue  # unreadable, or someone else's to remove
    return removed


def remove_marker(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
        if data.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def handle(data: Any) -> dict[str, Any]:
    """The reply to one comm message: the cleanup report, or why there is none."""
    action = data.get("action") if isinstance(data, dict) else None
    if action != "cleanup":
        return {"action": action, "ok": False, "error": f"unknown action {action!r}"}
    if threading.current_thread() is not threading.main_thread():
        return {
            "action": "cleanup",
            "ok": False,
            "error": "cleanup runs only on the kernel's main shell, between cells; this comm "
            "was opened on a subshell, where it would run beside a running cell",
        }
    try:
        from .cleanup import cleanup

        report = cleanup(caller="magic")  # read in a notebook: its advice names the magics
    except Exception as exc:
        _log.exception("qwen3_jupyter: cleanup requested by the sidebar failed")
        return {"action": "cleanup", "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "action": "cleanup",
        "ok": True,
        "freed_bytes": int(report.freed_bytes),
        "summary": report.summary(),
        "report": report.to_dict(),
    }


class _Cells:
    """Whether the main shell's cell is running, and the answers waiting for it to end.

    Why: ipykernel handles a comm message at once, on the main thread, while a cell with a
    top-level `await` waits (its shell is busy but its event loop is free). The cleanup must
    still run between cells, so then it runs when that cell ends (IPython's post_run_cell).
    Which cell is the main shell's is read off the stack, not by pairing the events: a cell may
    run cells itself (`run_cell`, `run_cell_async` that starts without ending, a blank one that
    ends without starting), a subshell's cells fire them on their own thread, and an interrupt
    can cost a cell its ending. The main cell's pre_run_cell fires inside one `run_cell_async`
    frame, its post_run_cell outside any; a nested cell's fire inside more."""

    def __init__(self) -> None:
        self.running = False
        self.waiting: list[tuple[Any, Any]] = []
        """(comm, request data) of the requests that wait for the running cell."""

    def pre_run_cell(self, info: Any = None) -> None:
        if threading.current_thread() is threading.main_thread() and _cells_on_stack() <= 1:
            self.running = True

    def post_run_cell(self, result: Any = None) -> None:
        if threading.current_thread() is not threading.main_thread() or _cells_on_stack():
            return  # a subshell's cell, or one the running cell ran itself
        self.running = False
        self._answer_waiting(handle)

    def answer(self, comm: Any, data: Any) -> None:
        """Answer on `comm` now, or when the running cell ends."""
        if self.running and threading.current_thread() is threading.main_thread():
            self.waiting.append((comm, data))
        else:
            comm.send(handle(data))

    def drop_waiting(self, reason: str) -> None:
        """Answer the waiting requests with `reason` instead of a cleanup."""
        self.running = False
        self._answer_waiting(lambda data: {"action": "cleanup", "ok": False, "error": reason})

    def _answer_waiting(self, reply: Callable[[Any], dict[str, Any]]) -> None:
        waiting, self.waiting = self.waiting, []
        for comm, data in waiting:
            try:
                comm.send(reply(data))
            except Exception:
                _log.exception("qwen3_jupyter: answering the sidebar failed")


def _cells_on_stack() -> int:
    """How many IPython cells the main thread is inside (frames of `run_cell_async`)."""
    from IPython.core.interactiveshell import InteractiveShell

    code, count = InteractiveShell.run_cell_async.__code__, 0
    frame: Any = sys._getframe(1)
    while frame is not None:
        count += frame.f_code is code
        frame = frame.f_back
    return count


_CELLS = _Cells()


_OPEN: list[Any] = []
"""The sidebar's comms still open: `%unload_ext` closes them (one kept open ran cleanups after
the unload, and put the gc hooks back with nothing left to take them away)."""


def _on_open(comm: Any, open_msg: dict[str, Any]) -> None:
    def on_msg(msg: dict[str, Any]) -> None:
        _CELLS.answer(comm, msg["content"].get("data"))

    def on_close(msg: Any = None) -> None:
        if comm in _OPEN:
            _OPEN.remove(comm)

    _OPEN.append(comm)
    comm.on_msg(on_msg)
    comm.on_close(on_close)
    data = open_msg.get("content", {}).get("data")
    if isinstance(data, dict) and data.get("action"):
        _CELLS.answer(comm, data)


def load(ip: Any) -> None:
    """Register the comm target and the marker; their undo goes to `lifecycle`."""
    manager = _comm_manager(ip)
    if manager is None:
        return
    manager.register_target(TARGET, _on_open)
    events = getattr(ip, "events", None)
    if events is not None:
        events.register("pre_run_cell", _CELLS.pre_run_cell)
        events.register("post_run_cell", _CELLS.post_run_cell)
    marker = marker_path()
    wrote = marker is not None and write_marker(marker)
    if wrote and marker is not None:
        remove_stale_markers(marker.parent)

    def cleanup_marker() -> None:
        if wrote and marker is not None:
            remove_marker(marker)

    if wrote:
        atexit.register(cleanup_marker)

    def undo() -> None:
        if manager.targets.get(TARGET) is _on_open:
            manager.unregister_target(TARGET, _on_open)
        if events is not None:
            for name, hook in (
                ("pre_run_cell", _CELLS.pre_run_cell),
                ("post_run_cell", _CELLS.post_run_cell),
            ):
                if hook in events.callbacks[name]:
                    events.unregister(name, hook)
        _CELLS.drop_waiting("qwen3_jupyter was unloaded before the cleanup ran")
        for comm in list(_OPEN):  # the sidebar reads the close as "not loaded"
            try:
                comm.close()
            except Exception:
                _log.debug("qwen3_jupyter: closing a sidebar comm failed", exc_info=True)
        _OPEN.clear()
        cleanup_marker()
        if wrote:
            atexit.unregister(cleanup_marker)

    lifecycle.on_unload("kernel-comm", undo)
