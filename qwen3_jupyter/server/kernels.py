"""This server's kernels (PID, notebook, marker file) and whose GPU memory is whose.

`running_kernels` runs on the event loop and only reads what the kernel and session managers
already hold (no message to any kernel, no code run in one). `attribute` is pure: it maps NVML's
process lists onto the kernels' process trees the sampler found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..kernel_comm import MARKER_SUFFIX
from ..nvml import NvmlReading, lists_every_process, pids_are_local
from .sampler import ProcessTree, WatchedKernel, gpu_key


@dataclass(frozen=True)
class KernelInfo:
    kernel_id: str
    name: str
    pid: int | None
    execution_state: str
    notebook_path: str | None
    marker: Path | None
    console_name: str | None = None
    """The name of the console ("Console 1") of a kernel that no notebook or file uses: a
    console's path is no file, so it is neither shown nor opened as one."""

    def watched(self) -> WatchedKernel | None:
        return WatchedKernel(self.pid, self.marker) if self.pid is not None else None


def marker_path(connection_file: str | None) -> Path | None:
    """Where a kernel with this connection file says "qwen3_jupyter is loaded here"."""
    if not connection_file:
        return None
    path = Path(connection_file)
    return path.with_name(path.stem + MARKER_SUFFIX)


def kernel_pid(kernel: Any) -> int | None:
    """The local process of a kernel, from its provisioner; None for remote kernels: a remote
    provisioner's `pid` (gateway_provisioners keeps the remote host's) would name an unrelated
    local process, and its memory would be shown as the notebook's."""
    from jupyter_client.provisioning import LocalProvisioner

    provisioner = getattr(kernel, "provisioner", None)
    if provisioner is not None and not isinstance(provisioner, LocalProvisioner):
        return None
    pid = getattr(provisioner, "pid", None)
    if pid is None:
        process = getattr(provisioner, "process", None) or getattr(kernel, "kernel", None)
        pid = getattr(process, "pid", None)
    return int(pid) if isinstance(pid, int) else None


@dataclass(frozen=True)
class KernelSession:
    """What a kernel is used by, for its label: a notebook (or file) path, else a console."""

    notebook_path: str | None
    console_name: str | None


async def kernel_sessions(session_manager: Any) -> dict[str, KernelSession]:
    """kernel id -> the document whose session uses it, else the console that does.

    A kernel can have several sessions: a notebook's, and a console's opened on it ("New
    Console for Notebook"), whose path is an internal name ("console-1-<uuid>"), not a file.
    A notebook wins over a file, and either over a console; among equals, the first listed.
    """
    if session_manager is None:
        return {}
    best: dict[str, tuple[int, dict[str, Any]]] = {}
    for session in await session_manager.list_sessions():
        kernel_id = (session.get("kernel") or {}).get("id")
        rank = _session_rank(session)
        if not kernel_id or rank is None:
            continue
        if kernel_id not in best or rank < best[kernel_id][0]:
            best[kernel_id] = (rank, session)
    return {
        kernel_id: (
            KernelSession(None, str(session.get("name") or "Console"))
            if rank == _CONSOLE
            else KernelSession(str(session["path"]), None)
        )
        for kernel_id, (rank, session) in best.items()
    }


_CONSOLE = 2


def _session_rank(session: dict[str, Any]) -> int | None:
    """0 for a notebook, 1 for another document (a file with a kernel), `_CONSOLE` for a
    console; None for a session that names no document and is no console."""
    kind = session.get("type")
    if kind == "console":
        return _CONSOLE
    if not session.get("path"):
        return None
    return 0 if kind == "notebook" else 1


async def running_kernels(kernel_manager: Any, session_manager: Any) -> list[KernelInfo]:
    """Every kernel this server runs, with its PID and its notebook's path where it has one."""
    sessions = await kernel_sessions(session_manager)
    kernels = []
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        try:
            kernel = kernel_manager.get_kernel(kernel_id)
        except KeyError:
            continue
        session = sessions.get(kernel_id, KernelSession(None, None))
        kernels.append(
            KernelInfo(
                kernel_id=kernel_id,
                name=str(getattr(kernel, "kernel_name", "") or ""),
                pid=kernel_pid(kernel),
                execution_state=str(getattr(kernel, "execution_state", "unknown") or "unknown"),
                notebook_path=session.notebook_path,
                marker=marker_path(getattr(kernel, "connection_file", None)),
                console_name=session.console_name,
            )
        )
    return kernels


@dataclass(frozen=True)
class Attribution:
    """GPU memory per kernel PID and of everything else, keyed like `gpu_key`.

    A None figure is unknown, never zero: NVML did not report the memory, lists host PIDs
    (containers), or lists no process while memory is in use.
    """

    kernels: Mapping[int, Mapping[str, int | None]]
    totals: Mapping[int, int | None]
    other: Mapping[str, int | None]
    notes: tuple[str, ...]


def attribute(
    reading: NvmlReading,
    trees: Mapping[int, ProcessTree],
    local_pids: frozenset[int],
    unread: frozenset[int] | None = frozenset(),
) -> Attribution:
    """Map NVML's per-GPU process lists onto the kernels' process trees (kernel + children).

    `unread` is `NvmlReader.unread`: GPUs the reading left out (None: it could not count them),
    which make every kernel's total unknown, as a kernel may have had memory on them.
    """
    notes: list[str] = []
    pids_are_ours = pids_are_local(reading, local_pids)
    if not pids_are_ours:
        notes.append(
            "NVML lists GPU processes by PIDs this server cannot see (a container?), so "
            "per-notebook VRAM is unknown; the GPU totals are right."
        )
    kernel_pids = {pid for tree in trees.values() for pid in tree.pids}
    per_kernel: dict[int, dict[str, int | None]] = {pid: {} for pid in trees}
    other: dict[str, int | None] = {}
    for gpu in reading.gpus:
        key = gpu_key(gpu.index, gpu.mig_parent)
        refused = not gpu.processes_listed
        hidden = not lists_every_process(gpu) and not refused
        if refused:
            notes.append(
                f"NVML will not list the processes on {gpu.label} (no permission here?), so "
                "per-notebook VRAM on it is unknown."
            )
        elif hidden:
            notes.append(
                f"{gpu.label} has memory in use but NVML lists no process on it, so "
                "per-notebook VRAM on it is unknown."
            )
        known = pids_are_ours and not hidden and not refused
        unreported = False
        for pid, tree in trees.items():
            mine = [p for p in gpu.processes if p.pid in tree.pids]
            if mine:
                used = [p.used_bytes for p in mine]
                unreported = unreported or None in used
                per_kernel[pid][key] = None if None in used else sum(u or 0 for u in used)
            else:
                per_kernel[pid][key] = 0 if known else None
        if unreported and pids_are_ours and not refused:
            notes.append(
                f"{gpu.label}: the driver does not report per-process memory here (common in "
                "containers), so the VRAM of the notebooks it lists is unknown; the GPU total "
                "is right."
            )
        rest = [p.used_bytes for p in gpu.processes if p.pid not in kernel_pids]
        known_rest = [u for u in rest if u is not None]
        if not known or (rest and not known_rest):
            other[key] = None
        else:
            other[key] = sum(known_rest)
    totals = {
        pid: None if unread is None or unread else _physical_total(reading, figures)
        for pid, figures in per_kernel.items()
    }
    return Attribution(per_kernel, totals, other, tuple(notes))


def _physical_total(reading: NvmlReading, figures: Mapping[str, int | None]) -> int | None:
    """Sum over physical GPUs; a MIG-enabled GPU counts its instances when it lists nothing.

    None when any GPU's figure is unknown (a partial sum would read as a complete one).
    """
    total = 0
    # Physical GPUs by NVML index, including a MIG parent whose own row could not be read.
    physical = sorted({g.index if g.mig_parent is None else g.mig_parent for g in reading.gpus})
    for index in physical:
        value = figures.get(gpu_key(index, None))
        instances = [
            figures.get(gpu_key(g.index, g.mig_parent))
            for g in reading.gpus
            if g.mig_parent == index
        ]
        if instances:
            known = [v for v in instances if v is not None]
            if value is None and len(known) < len(instances):
                return None
            value = max(value or 0, sum(known))
        if value is None:
            return None
        total += value
    return total
