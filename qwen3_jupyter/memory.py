"""Readers of memory figures (host, torch allocator) that return immutable snapshots.

This module imports nothing from the package, so the kernel side, the server side and the
benchmarks can all share it. torch is never imported here: if the calling process has not
imported torch, the torch readers answer with nothing rather than paying a multi-second import
(the Jupyter server process never imports torch).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import psutil

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class HostMemory:
    """Host RAM and this process's resident set, in bytes."""

    total: int
    available: int
    used: int
    process_rss: int


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


def read_host() -> HostMemory:
    """Host memory and this process's RSS."""
    vm = psutil.virtual_memory()
    return HostMemory(
        total=int(vm.total),
        available=int(vm.available),
        used=int(vm.total - vm.available),
        process_rss=process_rss(),
    )


def _torch() -> Any | None:
    """torch if this process already imported it, else None (never imports it)."""
    return sys.modules.get("torch")


def cuda_in_use() -> bool:
    """True when this process has initialised CUDA through torch (its counters mean something)."""
    torch = _torch()
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def read_torch() -> tuple[TorchDeviceMemory, ...]:
    """torch allocator figures for every visible CUDA device; empty when CUDA is not in use.

    Safe to call from a background thread while the main thread generates: these counters are
    plain reads of the allocator's statistics and never initialise CUDA.
    """
    if not cuda_in_use():
        return ()
    torch = _torch()
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


def live_tensor_bytes() -> dict[str, int]:
    """Bytes of the storages of all live tensors reachable by the garbage collector, per device.

    Shared storages (views) are counted once. This walks every tracked object, so it costs
    tens of milliseconds in a large namespace: use it for reports and tests, not hot paths.
    """
    torch = _torch()
    if torch is None:
        return {}
    import gc

    seen: set[tuple[str, int]] = set()
    totals: dict[str, int] = {}
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.is_meta:
                continue
            storage = obj.untyped_storage()
            device = str(obj.device)
            key = (device, storage.data_ptr())
            if key in seen:
                continue
            seen.add(key)
            totals[device] = totals.get(device, 0) + int(storage.nbytes())
        except Exception:
            continue
    return totals


def format_bytes(n: int | float | None) -> str:
    """Human-readable size with binary units; 'unknown' for None."""
    if n is None:
        return "unknown"
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return f"{sign}{value:.1f} TiB"
