"""The kernel side of the sidebar's "Free memory": the `qwen3_jupyter` comm and its marker file.

Driven like the sidebar drives it: a `comm_open` on the shell channel, the reply read from
iopub, in a real kernel.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from qwen3_jupyter.kernel_comm import MARKER_SUFFIX, TARGET, handle
from tests.kernel import NOTHING_FROZEN_BUT_PYTHONS_OWN, Kernel


def marker_of(kernel: Kernel) -> Path:
    connection_file = Path(kernel.km.connection_file)
    return connection_file.with_name(connection_file.stem + MARKER_SUFFIX)


def open_comm(kernel: Kernel, data: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Open a comm to the target with `data`; returns the kernel's first answer on it."""
    comm_id = uuid.uuid4().hex
    content = {"comm_id": comm_id, "target_name": TARGET, "data": data}
    kernel.kc.shell_channel.send(kernel.kc.session.msg("comm_open", content))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kernel.kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["content"].get("comm_id") != comm_id:
            continue
        if msg["msg_type"] in ("comm_msg", "comm_close"):
            return {"msg_type": msg["msg_type"], **msg["content"].get("data", {})}
    raise TimeoutError("the kernel never answered on the comm")


def test_loading_writes_a_marker_next_to_the_connection_file(kernel: Kernel) -> None:
    marker = json.loads(marker_of(kernel).read_text())
    assert marker["pid"] == kernel.value("__import__('os').getpid()")
    assert marker["comm_target"] == TARGET


def test_cleanup_over_the_comm_reports_what_it_freed(kernel: Kernel) -> None:
    shown = kernel.run("import torch\ntorch.ones(50_000_000)")  # 200 MB held by Out and _
    assert shown.status == "ok", shown.error
    reply = open_comm(kernel, {"action": "cleanup"})
    assert reply["msg_type"] == "comm_msg"
    assert reply["ok"] is True and reply["action"] == "cleanup"
    assert reply["freed_bytes"] > 100 * 2**20, reply["summary"]
    assert reply["summary"] == reply["report"]["summary"]
    assert "output cache" in reply["summary"]
    json.dumps(reply["report"])


def test_the_comm_runs_no_code_it_is_sent(kernel: Kernel, tmp_path: Path) -> None:
    target = tmp_path / "should-not-exist"
    reply = open_comm(kernel, {"action": "exec", "code": f"open({str(target)!r}, 'w')"})
    assert reply["ok"] is False and "unknown action" in reply["error"]
    assert not target.exists()


def test_unloading_removes_the_target_and_the_marker(fresh_kernel: Kernel) -> None:
    """And closes the sidebar's open comms: one left open ran cleanups after the unload, which
    put the gc hooks back with nothing left to take them away."""
    assert fresh_kernel.run("%load_ext qwen3_jupyter").status == "ok"
    assert marker_of(fresh_kernel).exists()
    comm_id = uuid.uuid4().hex
    content = {"comm_id": comm_id, "target_name": TARGET, "data": {}}
    fresh_kernel.kc.shell_channel.send(fresh_kernel.kc.session.msg("comm_open", content))
    assert fresh_kernel.run("%unload_ext qwen3_jupyter").status == "ok"
    assert not marker_of(fresh_kernel).exists()
    again = {"comm_id": comm_id, "data": {"action": "cleanup"}}
    fresh_kernel.kc.shell_channel.send(fresh_kernel.kc.session.msg("comm_msg", again))
    hooks = (
        "import gc, sys\n"
        "print(sum('IncrementalCollector' in getattr(c, '__qualname__', '') for c in gc.callbacks),"
        f" sys.unraisablehook is sys.__unraisablehook__, {NOTHING_FROZEN_BUT_PYTHONS_OWN})"
    )
    assert fresh_kernel.run(hooks).stdout.split() == ["0", "True", "True"]
    reply = open_comm(fresh_kernel, {"action": "cleanup"}, timeout=30)
    assert reply["msg_type"] == "comm_close"  # what the sidebar reads as "not loaded"
    assert fresh_kernel.run("%load_ext qwen3_jupyter").status == "ok"
    assert open_comm(fresh_kernel, {"action": "cleanup"})["ok"] is True


def test_loading_removes_the_markers_of_kernels_that_are_gone(fresh_kernel: Kernel) -> None:
    """A killed kernel cannot remove its marker: they piled up in Jupyter's runtime folder
    (321 in this machine's /tmp). Loading removes those whose connection file is gone and
    whose process is dead, and keeps a marker whose kernel may still run or be restarted."""
    import os
    import subprocess

    folder = marker_of(fresh_kernel).parent
    ended = subprocess.Popen(["true"])
    ended.wait()

    def marker(name: str, pid: int) -> Path:
        path = folder / f"{name}{MARKER_SUFFIX}"
        path.write_text(json.dumps({"pid": pid, "comm_target": TARGET}))
        return path

    gone = marker("kernel-gone", ended.pid)
    restartable = marker("kernel-restartable", ended.pid)
    (folder / "kernel-restartable.json").write_text("{}")
    running = marker("kernel-running", os.getpid())
    assert fresh_kernel.run("%load_ext qwen3_jupyter").status == "ok"
    assert not gone.exists()
    assert restartable.exists() and running.exists()
    assert marker_of(fresh_kernel).exists()


def test_cleanup_never_runs_beside_a_cell_on_a_subshell_thread() -> None:
    replies: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: replies.append(handle({"action": "cleanup"})))
    thread.start()
    thread.join()
    (reply,) = replies
    assert reply["ok"] is False and "main shell" in reply["error"]


AWAITING_CELL = """
import asyncio
for _ in range(30):
    await asyncio.sleep(0.1)  # the event loop is free: ipykernel handles comm messages now
print("cell done", flush=True)  # published now, not after the cell
"""


def test_a_request_during_an_awaiting_cell_runs_when_the_cell_ends(kernel: Kernel) -> None:
    """A cell with a top-level await leaves the kernel's loop free, and ipykernel then handles
    a comm_open at once, on the main thread: the cleanup must still wait for the cell."""
    cell_id = kernel.start(AWAITING_CELL)
    time.sleep(1.0)
    comm_id = uuid.uuid4().hex
    content = {"comm_id": comm_id, "target_name": TARGET, "data": {"action": "cleanup"}}
    kernel.kc.shell_channel.send(kernel.kc.session.msg("comm_open", content))
    order: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(order) < 2:
        try:
            msg = kernel.kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["content"].get("comm_id") == comm_id and msg["msg_type"] == "comm_msg":
            assert msg["content"]["data"]["ok"] is True, msg["content"]["data"]
            order.append("cleanup answered")
        elif msg["parent_header"].get("msg_id") == cell_id and msg["msg_type"] == "stream":
            assert msg["content"]["text"] == "cell done\n"
            order.append("cell done")
    assert order == ["cell done", "cleanup answered"]


def test_the_wait_follows_the_main_shells_cell_only() -> None:
    """Which ending ends the wait, in a real IPython shell: the main cell's, not that of a cell
    it runs itself or of a blank one (which ends without starting), nor a subshell's."""
    from types import SimpleNamespace

    from IPython.core.interactiveshell import InteractiveShell

    from qwen3_jupyter.kernel_comm import _Cells

    sent: list[dict[str, Any]] = []
    cells = _Cells()
    shell = InteractiveShell.instance()
    shell.events.register("pre_run_cell", cells.pre_run_cell)
    shell.events.register("post_run_cell", cells.post_run_cell)
    shell.user_ns.update(cells=cells, comm=SimpleNamespace(send=sent.append), sent=sent)
    try:
        result = shell.run_cell(
            "cells.answer(comm, {'action': 'unknown'})\n"
            "get_ipython().run_cell('')\n"
            "get_ipython().run_cell('nested = 1')\n"
            "import threading\n"
            "subshell = threading.Thread(target=cells.post_run_cell)\n"
            "subshell.start(); subshell.join(10)\n"
            "waiting = (cells.running, len(sent))\n"
        )
        assert result.success, result.error_in_exec
        assert shell.user_ns["waiting"] == (True, 0)
        assert not cells.running
        assert sent == [{"action": "unknown", "ok": False, "error": "unknown action 'unknown'"}]
    finally:
        shell.events.unregister("pre_run_cell", cells.pre_run_cell)
        shell.events.unregister("post_run_cell", cells.post_run_cell)
        InteractiveShell.clear_instance()
