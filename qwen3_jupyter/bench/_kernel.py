"""A real IPython kernel driven through jupyter_client, and what it sent back for each cell.

Shared by the benchmarks (which must measure inside a real kernel: the output cache matters)
and the test suite.

Tests assert on the messages the kernel really sends on iopub (streams, display data and
updates, comm messages, errors), collected per executed cell.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class Execution:
    """Everything the kernel published while running one cell, in arrival order."""

    code: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stdout"
        )

    @property
    def stderr(self) -> str:
        return "".join(
            m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stderr"
        )

    @property
    def status(self) -> str:
        return str(self.reply.get("status"))

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of_type("error")
        return errors[-1]["content"] if errors else None

    @property
    def error_line(self) -> str:
        """Why the cell failed, in one line: `ename: evalue` (its first line), else stderr's
        last line. Why: the error itself carries the whole traceback in ANSI colours (12k
        characters for one failed generate), and a lent GPU's runner returns only the last
        12,000 characters of a bench's output: two of them hid the whole table. A UsageError
        (a magic's one-line error) has no error message, only the reply's ename and evalue."""
        error = self.error or (self.reply if self.status == "error" else None)
        if error is not None:
            ename, evalue = error.get("ename", "Error"), str(error.get("evalue", "")).strip()
            return f"{ename}: {evalue.splitlines()[0]}" if evalue else str(ename)
        said = [line for line in self.stderr.splitlines() if line.strip()]
        return said[-1].strip() if said else f"the cell ended with status {self.status!r}"

    def texts(self, mime: str = "text/markdown") -> list[str]:
        """Every rendered value of `mime` from display_data/update_display_data/execute_result."""
        out = []
        for m in self.of_type("display_data", "update_display_data", "execute_result"):
            data = m["content"].get("data", {})
            if mime in data:
                out.append(data[mime])
        return out

    def final_displays(self) -> list[dict[str, Any]]:
        """Each display the cell left, as its last update left it (what a saved notebook
        keeps), in the order they were shown."""
        final: dict[object, dict[str, Any]] = {}
        for message in self.of_type("display_data", "update_display_data"):
            content = message["content"]
            display_id = content.get("transient", {}).get("display_id") or id(message)
            if message["msg_type"] == "display_data" or display_id in final:
                final[display_id] = content["data"]
        return list(final.values())

    @property
    def said(self) -> str:
        """stdout with the plain-text displays the cell ended with before it (a call's line
        ends with its closing notices in place of an empty output)."""
        shown = [d["text/plain"] + "\n" for d in self.final_displays() if list(d) == ["text/plain"]]
        return "".join(shown) + self.stdout

    def result(self) -> str | None:
        results = self.of_type("execute_result")
        return results[-1]["content"]["data"].get("text/plain") if results else None


class KernelDied(RuntimeError):
    """The kernel process ended while a cell was running."""


def private_kernel_manager(manager_class: type[Any] = KernelManager) -> Any:
    """A manager for a kernel only this process talks to: over IPC sockets in a folder of its
    own, not TCP ports (every TCP kernel warns about eavesdropping in red, once per kernel a
    benchmark starts, in the notebook that runs it). `socket_folder` is the caller's to remove
    once the kernel is shut down (`Kernel.shutdown` does). The connection file lives there too,
    so what the kernel writes beside it (`%load_ext qwen3_jupyter`'s marker, which a killed
    kernel cannot remove) goes with the folder. nbclient takes an AsyncKernelManager as
    `manager_class`."""
    folder = tempfile.mkdtemp(prefix="qwen3-kernel-")
    manager = manager_class(
        kernel_name="python3",
        transport="ipc",
        ip=os.path.join(folder, "k"),
        connection_file=os.path.join(folder, "kernel.json"),
    )
    manager.socket_folder = folder
    return manager


class Kernel:
    """One running kernel with a blocking client.

    `imports`: modules the kernel imports as it starts, before it answers (ipykernel's
    `exec_lines`), so a kernel started ahead of its use has done that work by then. `wait=False`
    returns once the process is started; `wait_ready` connects and waits for it.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        imports: Sequence[str] = (),
        wait: bool = True,
    ) -> None:
        self.km = private_kernel_manager()
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.imports = tuple(imports)
        starting = [f"--IPKernelApp.exec_lines=import {', '.join(imports)}"] if imports else []
        try:
            self.km.start_kernel(env=self.env, extra_arguments=starting)
        except BaseException:
            shutil.rmtree(self.km.socket_folder, ignore_errors=True)
            raise
        self.kc = self.km.client()
        self._ready = False
        if wait:
            try:
                self.wait_ready()
            except BaseException:  # a kernel that never answered is not left running
                self.shutdown()
                raise

    def wait_ready(self, timeout: float = 120) -> None:
        """Connect to the kernel and wait until it answers (its `imports` done); once."""
        if self._ready:
            return
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=timeout)
        self._ready = True

    def run(
        self,
        code: str,
        timeout: float = 120,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        cell_id: str | None = None,
    ) -> Execution:
        """Execute `code` and collect its iopub messages until the kernel is idle again.
        `cell_id`: the notebook cell it runs as (JupyterLab sends it with each request)."""
        execution = Execution(code)
        msg_id = self._execute(code, cell_id)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell did not finish in {timeout} s: {code[:80]!r}")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(remaining, 1.0))
            except queue.Empty:
                self._raise_if_dead(code)
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msg["received_at"] = time.monotonic()
            if on_message is not None:
                on_message(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
            execution.messages.append(msg)
        execution.reply = self._reply_to(msg_id, timeout)
        return execution

    def _execute(self, code: str, cell_id: str | None) -> str:
        if cell_id is None:
            return str(self.kc.execute(code, allow_stdin=False))
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        message = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
        self.kc.shell_channel.send(message)
        return str(message["header"]["msg_id"])

    def complete(self, code: str, timeout: float = 30) -> list[str]:
        """What the cell would read after each completion the kernel offers on Tab with the
        cursor at the end of `code`."""
        msg_id = self.kc.complete(code, len(code))
        reply = self._reply_to(msg_id, timeout)
        start, end = reply["cursor_start"], reply["cursor_end"]
        return [code[:start] + match + code[end:] for match in reply["matches"]]

    def _reply_to(self, msg_id: str, timeout: float) -> dict[str, Any]:
        """The shell reply to `msg_id`, skipping replies to earlier requests.

        A kernel slower than a second to answer its first kernel_info request gets a second
        one from `wait_for_ready`, whose reply stays queued on the shell channel; reading "the
        next reply" would then give every cell its predecessor's status (seen on an H100: the
        cell after a failing one reported an error it never had)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to request {msg_id} in {timeout} s")
            msg = self.kc.get_shell_msg(timeout=remaining)
            if msg["parent_header"].get("msg_id") == msg_id:
                return dict(msg["content"])

    def _raise_if_dead(self, code: str) -> None:
        """A kernel that died (a crash in native code, say) never goes idle: say so at once
        instead of waiting out the cell's timeout."""
        if not self.km.is_alive():
            raise KernelDied(f"the kernel died while running {code[:80]!r}")

    def start(self, code: str) -> str:
        """Start executing `code` without waiting; returns the message id."""
        return str(self.kc.execute(code, allow_stdin=False))

    def collect(self, msg_id: str, timeout: float = 120) -> Execution:
        """Collect the messages of a cell started with `start`."""
        execution = Execution("")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(
                    timeout=min(1.0, max(0.01, deadline - time.monotonic()))
                )
            except queue.Empty:
                self._raise_if_dead("")
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msg["received_at"] = time.monotonic()
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                execution.reply = self._reply_to(msg_id, timeout)
                return execution
            execution.messages.append(msg)
        raise TimeoutError("cell did not finish")

    def value(self, expression: str) -> Any:
        """Evaluate `expression` in the kernel and return it (via repr/literal_eval)."""
        import ast

        execution = self.run(f"print(repr({expression}))")
        assert execution.status == "ok", execution.error
        return ast.literal_eval(execution.stdout.strip())

    @property
    def pid(self) -> int | None:
        """The kernel process's PID (local kernels), for measuring it from outside."""
        provisioner = getattr(self.km, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        return int(pid) if pid is not None else None

    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
        shutil.rmtree(getattr(self.km, "socket_folder", ""), ignore_errors=True)


def timed_cell(kernel: Kernel, code: str, timeout: float = 1800) -> float:
    """Seconds `code` took in `kernel`, wall clock as the notebook user sees it; a failed cell
    raises instead of being timed."""
    started = time.perf_counter()
    execution = kernel.run(code, timeout=timeout)
    elapsed = time.perf_counter() - started
    if execution.status != "ok":
        raise RuntimeError(f"cell failed: {code[:60]!r}: {execution.error_line}")
    return elapsed


def load_or_exit(kernel: Kernel, code: str, bench: str, timeout: float = 3600) -> float:
    """Seconds the cell that loads the model took in `kernel`. Its failure (no such model, no
    GPU: the user's to fix) ends the bench in one line, as `bench step` says it, instead of a
    traceback through this harness; the caller's `finally` shuts its kernels down."""
    started = time.perf_counter()
    execution = kernel.run(code, timeout=timeout)
    if execution.status != "ok":
        said = execution.error_line
        if execution.reply.get("ename") == "UsageError":  # worded for the user already
            said = said.removeprefix("UsageError: ")
        raise SystemExit(f"bench {bench}: {said}")
    return time.perf_counter() - started
