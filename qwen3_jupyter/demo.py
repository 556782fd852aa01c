"""`python -m qwen3_jupyter.demo [NOTEBOOK]`: execute a notebook (default: the quickstart it
ships) headless in a real kernel, then print what ran, the tokens/s each `%qwen3` call
reported, and the kernel's memory before and after every cell (measured from outside the
kernel, on its process tree).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .memory import format_bytes

_TOKENS_PER_S = re.compile(r"([\d.]+) tok/s")


@dataclass(frozen=True)
class CellSummary:
    index: int
    source: str
    status: str
    seconds: float
    tokens_per_s: tuple[float, ...]
    rss_before: int | None
    rss_after: int | None


def _tree_rss(pid: int | None) -> int | None:
    """RSS of a process and its children (a kernel's DataLoader workers count too)."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
    except psutil.Error:
        return None


def _outputs_text(cell: Any) -> str:
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append(output.get("text", ""))
    return "".join(texts)


def run_notebook(path: Path, out_dir: Path, timeout: int = 600) -> tuple[list[CellSummary], Path]:
    """Execute `path` with nbclient; write the executed copy under `out_dir`."""
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    from .bench._kernel import private_kernel_manager

    notebook = nbformat.read(path, as_version=4)
    manager = private_kernel_manager(AsyncKernelManager)  # IPC: no TCP eavesdropping warning
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    summaries: list[CellSummary] = []
    state: dict[str, Any] = {}

    def kernel_pid() -> int | None:
        provisioner = getattr(client.km, "provisioner", None)
        return getattr(provisioner, "pid", None)

    def before(cell: Any, cell_index: int, **_: Any) -> None:
        state["rss"] = _tree_rss(kernel_pid())
        state["start"] = time.perf_counter()

    def after(cell: Any, cell_index: int, execute_reply: Any, **_: Any) -> None:
        text = _outputs_text(cell)
        summaries.append(
            CellSummary(
                index=cell_index,
                source=cell.source,
                status=str(execute_reply["content"]["status"]) if execute_reply else "?",
                seconds=time.perf_counter() - state["start"],
                tokens_per_s=tuple(float(x) for x in _TOKENS_PER_S.findall(text)),
                rss_before=state["rss"],
                rss_after=_tree_rss(kernel_pid()),
            )
        )

    client.on_cell_execute = before
    client.on_cell_executed = after
    try:
        client.execute()
    finally:
        _shut_down(manager)  # nbclient leaves a kernel it was handed (`km=`) running
        shutil.rmtree(manager.socket_folder, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        executed = out_dir / path.name
        nbformat.write(notebook, executed)
    return summaries, executed


def _shut_down(manager: Any) -> None:
    """Stop the notebook's kernel: without it the kernel outlived the demo and, once it noticed,
    printed "Parent appears to have exited" over the user's shell."""
    from jupyter_core.utils import run_sync

    if manager.has_kernel:
        with contextlib.suppress(Exception):
            run_sync(manager.shutdown_kernel)(now=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure_line(exc: BaseException) -> str:
    """A failed run in one readable line: a cell's error as its name and message (nbclient's
    text is a coloured traceback), anything else as its last line."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        text = f"{ename}: {evalue}" if evalue else str(ename)
    else:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = _ANSI.sub("", text).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def format_summary(path: Path, executed: Path, summaries: list[CellSummary]) -> str:
    lines = [
        f"Executed {path} headless in a real kernel -> {executed}",
        f"{'cell':>4}  {'status':6}  {'time':>6}  {'tok/s':>7}  "
        f"{'kernel RSS before -> after':27}  source",
    ]
    for s in summaries:
        first = s.source.strip().splitlines()[0] if s.source.strip() else ""
        rate = f"{max(s.tokens_per_s):.1f}" if s.tokens_per_s else "-"
        memory = f"{format_bytes(s.rss_before)} -> {format_bytes(s.rss_after)}"
        lines.append(
            f"{s.index:>4}  {s.status:6}  {s.seconds:5.2f}s  {rate:>7}  {memory:27}  {first[:60]}"
        )
    rates = [r for s in summaries for r in s.tokens_per_s]
    if rates:
        lines.append(f"{len(rates)} generations, {sum(rates) / len(rates):.1f} tok/s on average")
    return "\n".join(lines)


def quickstart() -> Path:
    """The quickstart notebook: shipped in the wheel (`pip install` users have no repository),
    else the repository's own (an editable install)."""
    shipped = Path(__file__).parent / "notebooks" / "quickstart.ipynb"
    if shipped.exists():
        return shipped
    return Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen3_jupyter.demo", description=__doc__)
    parser.add_argument(
        "notebook", type=Path, nargs="?", help="default: the quickstart notebook it ships"
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the copy")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    notebook = args.notebook or quickstart()
    if not notebook.is_file():
        print(f"demo: no notebook at {notebook}", file=sys.stderr)
        return 2
    try:
        summaries, executed = run_notebook(notebook, args.out, args.timeout)
    except Exception as exc:
        print(f"demo failed: {failure_line(exc)}", file=sys.stderr)
        copy = args.out / notebook.name
        if copy.exists():
            print(f"the executed notebook (with the error) is {copy}", file=sys.stderr)
        return 1
    print(format_summary(notebook, executed, summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
