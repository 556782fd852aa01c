"""NVIDIA GPUs through NVML: the reader, its frozen readings, and matching them to torch's devices.

This is the only place that imports `pynvml` (from nvidia-ml-py). Everything above the reader
(monitor, gauge, server, cleanup) works on the frozen readings here, so tests replace exactly one
thing: the module handed to `NvmlReader` (or installed as `pynvml` in a child process). Like
memory.py it imports nothing from the package but memory.py, so the kernel side, the server side
and the benchmarks share it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import psutil

from .memory import GiB, MiB, TorchDeviceMemory

NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_DEVICE_MIG_ENABLE = 1


@dataclass(frozen=True)
class GpuProcess:
    """One process NVML lists on a GPU; `used_bytes` is None when NVML does not know it."""

    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class GpuReading:
    """One GPU (or MIG instance) as NVML reports it, in bytes.

    `index` is NVML's index (host numbering, not torch's `cuda:N`); for a MIG instance it is the
    instance's slot on its parent and `mig_parent` is the parent's NVML index. `memory_source`
    says which memory call answered: "v2" (excludes the driver's own reservation, reported apart
    as `memory_reserved`) or "v1" (older drivers; counts the driver's reserve as used).
    """

    index: int
    uuid: str
    name: str
    memory_used: int
    memory_total: int
    utilization: int | None
    processes: tuple[GpuProcess, ...]
    memory_source: str
    mig_parent: int | None = None
    memory_reserved: int = 0
    processes_listed: bool = True
    """False when NVML refused to list the compute processes: `processes` is then unknown."""

    @property
    def memory_free(self) -> int:
        """What is left to allocate: total minus used minus the driver's reserve (v2 only)."""
        return max(0, self.memory_total - self.memory_reserved - self.memory_used)

    @property
    def label(self) -> str:
        """Short name for display: 'GPU 2' or 'GPU 0 / MIG 1'."""
        if self.mig_parent is None:
            return f"GPU {self.index}"
        return f"GPU {self.mig_parent} / MIG {self.index}"


@dataclass(frozen=True)
class NvmlReading:
    """Everything one NVML poll saw. `available` False means no NVML at all (see `reason`).

    With `available` True, `reason` (when set) says what failed during this read, such as a lost
    GPU; the GPUs that could still be read are in `gpus`.
    """

    available: bool
    reason: str | None
    driver_version: str | None
    gpus: tuple[GpuReading, ...]
    timestamp: float


def _text(value: object) -> str:
    """NVML strings are bytes in older wrappers and str in newer ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvml_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _nvml_message(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # pynvml's __str__ itself calls into the library
        text = ""
    return text or f"NVML error {_nvml_code(exc)}"


SHOWING_INSTEAD = "; showing host and torch memory only"
"""What a kernel's gauge shows without NVML, at the end of the reason (the server's metrics,
which show no torch memory, leave it out)."""


def _init_failure(exc: BaseException) -> str:
    """One line for the user: why there is no NVML and what they see instead."""
    code = _nvml_code(exc)
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        why = "no NVIDIA driver on this machine (libnvidia-ml not found)"
    elif code == NVML_ERROR_DRIVER_NOT_LOADED:
        why = "the NVIDIA driver is not loaded"
    else:
        why = _nvml_message(exc)
    return f"NVML unavailable: {why}{SHOWING_INSTEAD}"


class NvmlReader:
    """Reads every NVIDIA GPU through NVML; opened once, read many times, closed once.

    No method raises: a missing library or driver makes readings with `available=False` and a
    one-line `reason`; errors while reading (a GPU lost, a driver reset) end up in the reading's
    `reason`. Not meant to be shared between threads: the monitor owns one and calls it from its
    polling thread only.
    """

    INIT_RETRY_S = 30.0
    """How long after a failed nvmlInit the next read tries again (a driver loaded after the
    server or kernel started; not a machine without the library, which never gains one)."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml
        self._calls = threading.RLock()
        """Held by `read` and `close`: a monitor thread starting as the last one ends must not
        read while NVML is being shut down (a lock of the reader's own, so a driver call that
        hangs blocks only the thread that made it, never the kernel's main thread's lock)."""
        self._opened = False
        self._tried = False
        self._tried_at = 0.0
        self._may_retry = False
        self._failure: str | None = None
        self._driver: str | None = None
        self.unread: frozenset[int] | None = frozenset()
        """NVML indices of the GPUs the last `read` could not read (lost, or MIG slices
        unlisted); None when it could not even count them. A reading lists only what answered, so
        without this a sum over its GPUs would read as complete."""

    @property
    def opened(self) -> bool:
        return self._opened

    def open(self) -> None:
        """nvmlInit once; a failure is remembered as the reason, and tried again after
        `INIT_RETRY_S` unless the library is missing (the sidebar's sampler never idles while
        a tab polls: a driver loaded late stayed "unavailable" until every tab closed)."""
        import time

        if self._tried and not (
            self._may_retry and time.monotonic() - self._tried_at >= self.INIT_RETRY_S
        ):
            return
        self._tried, self._tried_at, self._may_retry = True, time.monotonic(), False
        if self._nvml is None:
            try:
                import pynvml
            except Exception:
                self._failure = (
                    "NVML unavailable: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
                    + SHOWING_INSTEAD
                )
                return
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            self._failure = _init_failure(exc)
            self._may_retry = _nvml_code(exc) != NVML_ERROR_LIBRARY_NOT_FOUND
            return
        self._opened, self._failure = True, None
        try:
            self._driver = _text(self._nvml.nvmlSystemGetDriverVersion())
        except Exception:
            self._driver = None

    def close(self) -> None:
        """nvmlShutdown if `open` succeeded; safe to call any number of times."""
        with self._calls:
            self._close()

    def _close(self) -> None:
        if self._opened:
            self._opened = False
            try:
                assert self._nvml is not None
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._tried = False
        self._failure = None

    def read(self) -> NvmlReading:
        """One poll of every GPU (opening NVML on first use). Never raises."""
        with self._calls:
            return self._read()

    def _read(self) -> NvmlReading:
        import time

        now = time.time()
        self.open()
        self.unread = None  # until the GPUs are counted
        if not self._opened:
            return NvmlReading(False, self._failure, None, (), now)
        nvml = self._nvml
        assert nvml is not None
        problems: list[str] = []
        gpus: list[GpuReading] = []
        unread: set[int] = set()
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            if _nvml_code(exc) == NVML_ERROR_UNINITIALIZED:  # a driver reset: init again next
                self._close()
            return NvmlReading(
                True, f"NVML error: {_nvml_message(exc)}", self._driver, (), time.time()
            )
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                problems.append(f"GPU {index}: {_nvml_message(exc)}")
                unread.add(index)
                continue
            parent_read = True
            try:
                gpus.append(self._read_device(handle, index, None))
            except Exception as exc:
                problems.append(f"GPU {index}: {_nvml_message(exc)}")
                parent_read = False
                if _nvml_code(exc) not in (NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_SUPPORTED):
                    unread.add(index)
                    continue  # a lost GPU: nothing on it answers
                # else a container given one MIG slice, which may not read the parent: the
                # slice still counts
            try:
                instances = self._read_mig(handle, index)
            except Exception as exc:
                problems.append(f"GPU {index} MIG: {_nvml_message(exc)}")
                if not parent_read:
                    unread.add(index)  # the GPU was read: its row stays, with the problem said
                continue
            gpus.extend(instances)
            if not parent_read and not instances:
                unread.add(index)  # neither the GPU nor a slice of it answered
        self.unread = frozenset(unread)
        reason = "NVML error: " + "; ".join(problems) if problems else None
        return NvmlReading(True, reason, self._driver, tuple(gpus), now)

    def process_bytes(self, uuid: str, pids: set[int]) -> int | None:
        """Bytes `pids` use on the GPU (or MIG instance) with this UUID; None where unknown.

        A few NVML calls for one device, where `read` polls every GPU and MIG slot: for a
        caller on the kernel's main thread (a cleanup report), which must stay cheap."""
        self.open()
        if not self._opened:
            return None
        nvml = self._nvml
        assert nvml is not None
        key = _uuid_key(uuid)
        for spelling in (uuid, f"GPU-{key}", f"MIG-{key}"):
            try:
                handle = nvml.nvmlDeviceGetHandleByUUID(spelling)
            except Exception as exc:
                if _nvml_code(exc) == NVML_ERROR_UNINITIALIZED:  # a driver reset: init again
                    self._close()
                    return None
                continue
            processes, listed = self._processes(handle)
            return _pids_bytes(processes, pids) if listed else None
        return None

    def _read_mig(self, handle: Any, parent: int) -> list[GpuReading]:
        """The MIG instances of a MIG-enabled GPU (none on GPUs without MIG)."""
        nvml = self._nvml
        assert nvml is not None
        if not hasattr(nvml, "nvmlDeviceGetMigMode"):
            return []
        try:
            current = nvml.nvmlDeviceGetMigMode(handle)[0]
        except Exception as exc:
            if _nvml_code(exc) in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                return []
            raise
        if current != NVML_DEVICE_MIG_ENABLE:
            return []
        instances = []
        for slot in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except Exception as exc:
                if _nvml_code(exc) == NVML_ERROR_NOT_FOUND:
                    continue
                raise
            instances.append(self._read_device(mig, slot, parent))
        return instances

    def _read_device(self, handle: Any, index: int, parent: int | None) -> GpuReading:
        nvml = self._nvml
        assert nvml is not None
        used, total, reserved, source = self._memory(handle)
        processes, listed = self._processes(handle)
        return GpuReading(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            memory_used=used,
            memory_total=total,
            utilization=self._utilization(handle),
            processes=processes,
            memory_source=source,
            mig_parent=parent,
            memory_reserved=reserved,
            processes_listed=listed,
        )

    def _memory(self, handle: Any) -> tuple[int, int, int, str]:
        """(used, total, reserved, source): the v2 call, or v1 only where v2 does not exist.

        v1 counts the driver's own reservation as used (hundreds of MiB on an idle GPU from R510
        on), so it is used only when the wrapper lacks `nvmlMemory_v2` or the v2 call fails: "not
        supported", a missing entry point, or another error where v1 still answers (WSL drivers
        answer v2 with "Unknown Error"). Where v1 fails too, v2's error is the one raised.
        """
        nvml = self._nvml
        assert nvml is not None
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
                reserved = int(getattr(info, "reserved", 0) or 0)
                return int(info.used), int(info.total), reserved, "v2"
            except Exception as exc:
                if _nvml_code(exc) in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                    v2_error = None
                else:
                    v2_error = exc
        else:
            v2_error = None
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:
            if v2_error is not None:
                raise v2_error from None
            raise
        return int(info.used), int(info.total), 0, "v1"

    def _utilization(self, handle: Any) -> int | None:
        """GPU utilisation percent; None where NVML does not report it (MIG instances, vGPUs)."""
        try:
            return int(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)  # type: ignore[union-attr]
        except Exception:
            return None

    def _processes(self, handle: Any) -> tuple[tuple[GpuProcess, ...], bool]:
        """Compute then graphics processes, each pid once, and whether NVML listed the compute
        processes at all (it refuses without privileges, e.g. on a MIG parent in a container):
        an empty list that NVML refused is unknown, not "no process"."""
        found: dict[int, int | None] = {}
        listed = True
        for call in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            entries = self._listing(call, handle)
            if entries is None:
                listed = listed and call != "nvmlDeviceGetComputeRunningProcesses"
                continue
            for proc in entries:
                pid = int(proc.pid)
                used = getattr(proc, "usedGpuMemory", None)
                used = int(used) if used is not None else None
                known = found.get(pid)
                if pid not in found or known is None:
                    found[pid] = used
                elif used is not None:
                    found[pid] = max(known, used)
        return tuple(GpuProcess(pid, used) for pid, used in found.items()), listed

    def _listing(self, call: str, handle: Any) -> list[Any] | None:
        """One process list, or None when NVML will not give it. nvidia-ml-py's unversioned
        call is the v3 entry point, which drivers before R510 lack (FUNCTION_NOT_FOUND, or its
        NVMLLibraryMismatchError, not an NVMLError): those drivers answer the v2 call."""
        for name in (call, f"{call}_v2"):
            fn = getattr(self._nvml, name, None)
            if fn is None:
                continue
            try:
                return list(fn(handle))
            except Exception as exc:
                missing = type(exc).__name__ == "NVMLLibraryMismatchError"
                if not missing and _nvml_code(exc) != NVML_ERROR_FUNCTION_NOT_FOUND:
                    return None
        return None


def _uuid_key(uuid: str | None) -> str:
    """UUID without its 'GPU-'/'MIG-' prefix, lower case: torch and NVML spell them differently."""
    if not uuid:
        return ""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def cuda_visible_entries(value: str) -> list[str]:
    """CUDA_VISIBLE_DEVICES entries as CUDA parses them: up to the first invalid one."""
    entries = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            if int(entry) < 0:
                break
        elif not entry.lower().startswith(("gpu-", "mig-")):
            break
        entries.append(entry)
    return entries


def visible_gpus(
    reading: NvmlReading,
    torch_devices: tuple[TorchDeviceMemory, ...] | None = None,
    environ: Mapping[str, str] | None = None,
    unread: frozenset[int] = frozenset(),
) -> tuple[GpuReading, ...]:
    """The GPUs this process can use, in the order torch numbers them (`cuda:0` first)."""
    return tuple(gpu for gpu, _ in cuda_devices(reading, torch_devices, environ, unread))


def cuda_devices(
    reading: NvmlReading,
    torch_devices: tuple[TorchDeviceMemory, ...] | None = None,
    environ: Mapping[str, str] | None = None,
    unread: frozenset[int] = frozenset(),
) -> tuple[tuple[GpuReading, int | None], ...]:
    """The GPUs this process can use, each with the index torch gives it (None where that
    cannot be known), in that order.

    When torch has initialised CUDA (and knows its devices' UUIDs), its devices are matched to
    NVML's by UUID. Otherwise CUDA_VISIBLE_DEVICES decides (indices, or UUIDs / unique UUID
    prefixes, as CUDA accepts them; indices assume CUDA's order matches NVML's PCI order): a GPU
    in `unread` (NVML could not read it) still takes its place in CUDA's numbering, rather than
    ending the list as an invalid entry does. Unset means every GPU, unnumbered: CUDA's order
    over MIG slices and their parents is not NVML's.
    """
    if torch_devices and all(d.uuid for d in torch_devices):
        by_key = {_uuid_key(g.uuid): g for g in reading.gpus}
        matched = [(by_key.get(_uuid_key(d.uuid)), d.index) for d in torch_devices]
        return tuple((g, index) for g, index in matched if g is not None)
    env = os.environ if environ is None else environ
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return tuple((g, None) for g in reading.gpus)
    chosen: list[tuple[GpuReading, int | None]] = []
    unmatched_uuids = len(unread)  # a UUID entry may name an unread GPU (its UUID is unknown)
    for position, entry in enumerate(cuda_visible_entries(value)):
        if entry.isdigit():
            hits = [g for g in reading.gpus if g.mig_parent is None and g.index == int(entry)]
            if not hits and int(entry) in unread:
                continue
        else:
            key = _uuid_key(entry)
            hits = [g for g in reading.gpus if _uuid_key(g.uuid).startswith(key)]
            if not hits and unmatched_uuids:
                unmatched_uuids -= 1
                continue
        if len(hits) != 1 or any(hits[0] is gpu for gpu, _ in chosen):
            break
        chosen.append((hits[0], position))
    return tuple(chosen)


def torch_device_for(
    gpu: GpuReading, torch_devices: tuple[TorchDeviceMemory, ...]
) -> TorchDeviceMemory | None:
    """torch's view of the same device (matched by UUID), if torch uses it."""
    key = _uuid_key(gpu.uuid)
    return next((d for d in torch_devices if _uuid_key(d.uuid) == key), None)


def unlisted_threshold(memory_source: str) -> int:
    """Memory in use above which a GPU with an empty process list must be hiding processes.

    The v1 call counts the driver's own reservation (hundreds of MiB on an idle GPU) as used.
    """
    return 1 * GiB if memory_source == "v1" else 256 * MiB


def lists_every_process(gpu: GpuReading) -> bool:
    """Whether NVML's process list for `gpu` can be trusted to be whole: it answered, and a GPU
    with memory in use lists someone (an empty list with GiBs in use is hiding them)."""
    hidden = not gpu.processes and gpu.memory_used > unlisted_threshold(gpu.memory_source)
    return gpu.processes_listed and not hidden


def existing_pids(reading: NvmlReading) -> frozenset[int]:
    """The PIDs in NVML's process lists that exist here (none do inside most containers)."""
    listed = {p.pid for gpu in reading.gpus for p in gpu.processes}
    return frozenset(pid for pid in listed if psutil.pid_exists(pid))


def pids_are_local(reading: NvmlReading, local_pids: frozenset[int]) -> bool:
    """Whether NVML lists PIDs of this PID namespace (`local_pids`: `existing_pids`): then a
    process it does not list has no memory on that GPU. Inside a container it lists the host's
    PIDs, and a process missing from the list tells nothing."""
    listed = {p.pid for gpu in reading.gpus for p in gpu.processes}
    return not listed or bool(listed & local_pids)


def _pids_bytes(processes: tuple[GpuProcess, ...], pids: set[int]) -> int | None:
    """Bytes `pids` use among `processes`; None when none of them is listed or NVML does not
    know a listed one's memory (unknown, never 0)."""
    mine = [p for p in processes if p.pid in pids]
    if not mine or any(p.used_bytes is None for p in mine):
        return None
    return sum(p.used_bytes or 0 for p in mine)


def process_gpu_memory(reading: NvmlReading, pids: set[int]) -> dict[int, int | None]:
    """Bytes these pids use on each whole GPU, by NVML index; None where it is unknown.

    Unknown (never 0) when no pid is in NVML's list — inside a container NVML lists host PIDs,
    and a process that has not touched the GPU is not listed either — or NVML does not know a
    listed process's memory. MIG instances are left out here; see `process_memory_by_uuid`.
    """
    return {g.index: _pids_bytes(g.processes, pids) for g in reading.gpus if g.mig_parent is None}


def process_memory_by_uuid(reading: NvmlReading, pids: set[int]) -> dict[str, int | None]:
    """Like `process_gpu_memory`, for every GPU and MIG instance, keyed by UUID."""
    return {g.uuid: _pids_bytes(g.processes, pids) for g in reading.gpus}
