"""Readers of memory figures (torch allocator, host, cgroup) that return immutable snapshots;
the NVIDIA driver's figures are nvml.py's.

This module imports nothing from the package, so the kernel side, the server side and the
benchmarks can all share it. torch is never imported here: if the calling process has not
imported torch, the torch readers answer with nothing rather than paying a multi-second import
(the Jupyter server process never imports torch).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

MiB = 1024 * 1024
GiB = 1024 * MiB
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class HostMemory:
    """Host RAM and this process's resident set, in bytes.

    Inside a container with a memory limit, `total`/`used`/`available` are the container's
    (cgroup) figures, not the machine's — the limit is what an out-of-memory kill enforces —
    and `source` says "cgroup"; otherwise `source` is "host".
    """

    total: int
    available: int
    used: int
    process_rss: int
    source: str = "host"


@dataclass(frozen=True)
class TorchDeviceMemory:
    """One CUDA device as torch's caching allocator sees it, in bytes."""

    index: int
    name: str
    uuid: str | None
    allocated: int
    reserved: int
    peak_allocated: int
    peak_reserved: int


def process_rss(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), in bytes."""
    return int(psutil.Process(pid or os.getpid()).memory_info().rss)


def added_memory(pid: int) -> int:
    """What child process `pid` adds to its parent's memory: its unique set size (pages only it
    maps). Its RSS would count again every page a fork shares with the parent: two idle
    DataLoader workers of a 400 MiB kernel read 1.2 GiB. Its RSS where the unique set cannot be
    read (no permission)."""
    process = psutil.Process(pid)
    try:
        return int(process.memory_full_info().uss)
    except psutil.AccessDenied:
        return int(process.memory_info().rss)


def read_host(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> HostMemory:
    """Host memory (or the container's limit, when lower) and this process's RSS."""
    vm = psutil.virtual_memory()
    rss = process_rss()
    limit = cgroup_memory(cgroup_root, proc_cgroup)
    if limit is not None and limit[0] < vm.total:
        total, used = limit
        return HostMemory(total, max(0, total - used), used, rss, source="cgroup")
    return HostMemory(int(vm.total), int(vm.available), int(vm.total - vm.available), rss)


def cgroup_memory(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> tuple[int, int] | None:
    """(limit, usage) of this process's memory cgroup, v2 or v1; None when unlimited or unknown.

    Usage excludes the reclaimable page cache (as `docker stats` does), so a container that
    read a large file does not look full.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: 0::/path
            base, names = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base = root / "memory"
            names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        found = [_cgroup_figures(folder, *names) for folder in _up_to(base, path.lstrip("/"))]
        limited = [figures for figures in found if figures is not None]
        if limited:
            return min(limited)  # the smallest limit binds (a pod's, above its container's)
    return None


def _up_to(base: Path, relative: str) -> list[Path]:
    """The cgroup folder at `relative` under the mount `base`, then each above it up to `base`.

    A parent's limit binds its children too (a Kubernetes pod's), and a container that mounts
    its own cgroup at the root (Docker on cgroup v1) finds its limit there: /proc names the
    host's path (`/docker/<id>`), which does not exist inside it.
    """
    folder = base / relative
    chain = [folder]
    while folder != base and base in folder.parents:
        folder = folder.parent
        chain.append(folder)
    return chain


def _cgroup_figures(
    folder: Path, limit_file: str, usage_file: str, cache_key: str
) -> tuple[int, int] | None:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    if limit_text == "max" or not limit_text.isdigit() or int(limit_text) >= 1 << 60:
        return None
    cache = 0
    try:
        for stat in (folder / "memory.stat").read_text().splitlines():
            key, _, value = stat.partition(" ")
            if key == cache_key:
                cache = int(value)
    except (OSError, ValueError):
        pass
    return int(limit_text), max(0, usage - cache)


def imported_torch() -> Any | None:
    """torch if this process already imported it, else None (never imports it). A torch the
    main thread is still importing is None too: the gauge's thread polled one whose `cuda` did
    not exist yet ("partially initialized module 'torch'"), a traceback in the first call's
    cell."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    return torch


def cuda_in_use() -> bool:
    """True when this process has initialised CUDA through torch (its counters mean something)."""
    torch = imported_torch()
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def read_torch() -> tuple[TorchDeviceMemory, ...]:
    """torch allocator figures for every visible CUDA device; empty when CUDA is not in use.

    Safe to call from a background thread while the main thread generates: these counters are
    plain reads of the allocator's statistics and never initialise CUDA.
    """
    if not cuda_in_use():
        return ()
    torch = imported_torch()
    assert torch is not None
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        devices.append(
            TorchDeviceMemory(
                index=index,
                name=str(props.name),
                uuid=_format_uuid(uuid),
                allocated=int(torch.cuda.memory_allocated(index)),
                reserved=int(torch.cuda.memory_reserved(index)),
                peak_allocated=int(torch.cuda.max_memory_allocated(index)),
                peak_reserved=int(torch.cuda.max_memory_reserved(index)),
            )
        )
    return tuple(devices)


def _format_uuid(uuid: object) -> str | None:
    """torch's device uuid as NVML spells it ('GPU-xxxxxxxx-...'), or None when unknown."""
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


_NOT_MEMORY = frozenset({"FakeTensor", "FunctionalTensor"})
"""Tensor subclasses torch.compile leaves behind that stand for shapes, not memory."""


def live_tensor_bytes() -> dict[str, int]:
    """Bytes of the storages of all live tensors reachable by the garbage collector, per device.

    Shared storages (views) are counted once. This walks every tracked object, so it costs
    tens of milliseconds in a large namespace: use it for reports and tests, not hot paths.
    """
    totals: dict[str, int] = {}
    for (device, _), size in live_storages().items():
        totals[device] = totals.get(device, 0) + size
    return totals


def live_storages() -> dict[tuple[str, int], int]:
    """The storages of all live tensors the garbage collector reaches: (device, address) to
    bytes (`live_tensor_bytes`'s walk)."""
    torch = imported_torch()
    if torch is None:
        return {}
    import gc

    storages: dict[tuple[str, int], int] = {}
    for obj in gc.get_objects():
        try:
            # type() rather than isinstance(): isinstance reads __class__, which wakes
            # deprecation shims (torch.distributed.reduce_op) and warns.
            kind = type(obj)
            if not issubclass(kind, torch.Tensor) or kind.__name__ in _NOT_MEMORY or obj.is_meta:
                continue
            address, size = storage_span(obj)
            key = (str(obj.device), address)
            storages[key] = size
        except Exception:
            continue
    return storages


def storage_span(tensor: Any) -> tuple[int, int]:
    """(address, bytes) of the storage `tensor` lives in: the key that counts a storage once,
    and all of it (`x[:5].detach()` keeps the whole of `x`'s storage, with no `_base` to say
    so). `untyped_storage()` makes a Python storage object that torch keeps while the tensor
    lives: a report over a million tensors leaves a million small objects, the price of a
    figure that is right."""
    storage = tensor.untyped_storage()
    return int(storage.data_ptr()), int(storage.nbytes())


def trim_host_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc `malloc_trim`), so freed CPU tensors
    show in RSS; False where there is nothing to call (not Linux, not glibc)."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


@functools.cache
def _libc() -> Any:
    """glibc, loaded once (a CDLL per call would leave a small garbage cycle every cleanup)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - not glibc (musl): no malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


def format_bytes(n: int | float | None) -> str:
    """Human-readable size with binary units; 'unknown' for None."""
    if n is None:
        return "unknown"
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{sign}{value:.1f} TiB"
