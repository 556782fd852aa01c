"""The server's one sampler thread: NVML, host memory and kernel process trees, cached.

Every metrics request reads the cached `Sample`; only this thread calls NVML (calls can block
for tens of milliseconds, and must never run on Tornado's event loop), so ten browser tabs cost
the same NVML calls as one. The thread starts on the first request and stops itself (closing
NVML) once nobody asked for a while: `idle_timeout` seconds, or a few of its own polling
intervals for a client that said how often it polls (`request(..., client_interval=...)`), so
a server nobody watches never polls and a slow client's sparkline is not started afresh at
every poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from ..memory import HostMemory, added_memory, read_host
from ..nvml import NvmlReader, NvmlReading, existing_pids

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchedKernel:
    """What the sampler needs to know about one kernel: its process and its marker file."""

    pid: int
    marker: Path | None = None


@dataclass(frozen=True)
class ProcessTree:
    """A kernel process and its descendants (DataLoader workers and the like) in one sample.

    `rss` is the sum over the tree (None when the kernel process is gone). `extension_loaded`
    comes from the marker file `kernel_comm` writes when `%load_ext qwen3_jupyter` runs.
    `gone` is true when the kernel process no longer runs: it exited, or it is a zombie (killed
    and not yet reaped by the server, which /proc reports as a process of 0 bytes).
    """

    pid: int
    pids: frozenset[int]
    rss: int | None
    extension_loaded: bool
    gone: bool = False


@dataclass(frozen=True)
class HistoryPoint:
    timestamp: float
    gpu_memory_used: Mapping[str, int]
    """Memory in use per GPU read at this point; a GPU missing here was not read (lost for a
    moment): the endpoint's history has null there, never 0."""
    host_used: int


@dataclass(frozen=True)
class Sample:
    """One reading of everything the endpoint serves, taken on the sampler thread."""

    nvml: NvmlReading
    host: HostMemory
    trees: Mapping[int, ProcessTree]
    local_pids: frozenset[int]
    """NVML-listed PIDs that exist in this PID namespace (see `existing_pids`)."""
    timestamp: float
    history: tuple[HistoryPoint, ...] = ()
    unread_gpus: frozenset[int] | None = frozenset()
    """GPUs NVML listed but could not read; None when it could not list them (see
    `NvmlReader.unread`): kernel totals are then unknown, not a sum over the GPUs that answered."""


KEEP_INTERVALS = 3
"""A client that polls every N seconds keeps the sampler running for this many of its intervals
(when that is longer than `idle_timeout`): one late or failed poll does not stop it."""
MAX_CLIENT_INTERVAL = 600.0
"""The longest polling interval a client may claim (the sidebar's settings allow 10 minutes)."""

STALE_INTERVALS = 3
"""A sample older than this many intervals (plus `STALE_SLACK`) means NVML stopped answering."""
STALE_SLACK = 0.5


def stale_after(interval: float) -> float:
    """Seconds after which a sample is stale: the sampler has been stuck, not merely between
    two readings (slack for a slow process walk, so a healthy sampler is never flagged)."""
    return STALE_INTERVALS * interval + STALE_SLACK


def gpu_key(index: int, mig_parent: int | None) -> str:
    """Key of a GPU in every per-GPU map of the endpoint: '2', or '2/1' for MIG instance 1 of 2."""
    return str(index) if mig_parent is None else f"{mig_parent}/{index}"


@dataclass
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Sample]


def read_marker(path: Path | None, pids: frozenset[int]) -> bool:
    """True when `path` exists and names one of `pids` (a marker of this very kernel process)."""
    if path is None:
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("pid") in pids


def _proc_children(pid: int) -> list[int] | None:
    """Children of `pid` from /proc/<pid>/task/*/children (Linux); None where unsupported."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    except OSError:
        return None
    children: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # a kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return children


def _ppid_table() -> dict[int, list[int]]:
    """parent -> children for every process (one pass; the portable fallback)."""
    table: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid is not None:
            table.setdefault(int(ppid), []).append(proc.pid)
    return table


def _running(pid: int) -> bool:
    """False when `pid` has exited or is a zombie (dead, not yet reaped by its parent)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True  # cannot tell (access denied): the memory read below decides


def process_trees(kernels: Iterable[WatchedKernel]) -> dict[int, ProcessTree]:
    """Each kernel's process tree (kernel and descendants) and its summed RSS.

    On Linux the tree is read from /proc/<pid>/task/*/children, so the cost grows with the
    kernels, not with every process on the machine. Only PIDs and memory are read: never
    command lines or environments. A kernel process that is gone (exited, or a zombie: a
    SIGKILLed kernel until the server reaps it) gets a `gone` tree with RSS unknown.
    """
    table: dict[int, list[int]] | None = None
    trees = {}
    for kernel in kernels:
        if not _running(kernel.pid):
            trees[kernel.pid] = ProcessTree(kernel.pid, frozenset({kernel.pid}), None, False, True)
            continue
        pids = {kernel.pid}
        stack = [kernel.pid]
        while stack:
            parent = stack.pop()
            children = _proc_children(parent)
            if children is None:
                table = _ppid_table() if table is None else table
                children = table.get(parent, [])
            for child in children:
                if child not in pids:
                    pids.add(child)
                    stack.append(child)
        rss, gone = _tree_rss(kernel.pid, pids)
        frozen = frozenset(pids)
        loaded = rss is not None and read_marker(
            kernel.marker, frozen
        )  # a killed kernel's marker stays
        trees[kernel.pid] = ProcessTree(kernel.pid, frozen, rss, loaded, gone)
    return trees


def _tree_rss(root: int, pids: set[int]) -> tuple[int | None, bool]:
    """A tree's memory: the RSS of its heaviest process (the Python kernel, also where the
    server started a wrapper such as `conda run` or a shell script, whose child it is), plus
    what each other process adds (`added_memory`: a fork's shared pages are counted once).
    Counting the started process's RSS alone showed a wrapped kernel at 476 of its 580 MiB.
    (None, gone) where the started process cannot be read: gone when it has exited."""
    resident: dict[int, int] = {}
    for pid in pids:
        try:
            resident[pid] = int(psutil.Process(pid).memory_info().rss)
        except (psutil.Error, OSError) as error:
            if pid == root:
                return None, isinstance(error, psutil.NoSuchProcess)  # ZombieProcess included
    heaviest = max(resident, key=resident.__getitem__)
    total = resident[heaviest]
    for pid in resident:
        if pid != heaviest:
            try:  # a child adds its own pages, not the ones it shares with the kernel
                total += added_memory(pid)
            except (psutil.Error, OSError):
                continue
    return total, False


class Sampler:
    """Samples on its own thread every `interval` seconds while someone asks for data.

    `request()` is called on the event loop by every metrics request: it records which kernels
    to watch and (re)starts the thread; `current()` awaits a sample no older than two intervals
    without blocking the loop. Readers of `latest` get an immutable `Sample`.
    """

    def __init__(
        self,
        interval: float = 1.0,
        history_length: int = 120,
        idle_timeout: float = 60.0,
        reader_factory: Callable[[], NvmlReader] = NvmlReader,
    ) -> None:
        self.interval = max(0.05, float(interval))
        # At least a few samples' worth: with 0 (or less) the thread stopped before its first
        # sample, and every request without `?interval=` waited 5 s for a 503.
        floor = KEEP_INTERVALS * self.interval
        timeout = float(idle_timeout)
        self.idle_timeout = floor if math.isnan(timeout) or timeout < floor else timeout
        self._reader_factory = reader_factory
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._watched: tuple[WatchedKernel, ...] = ()
        self._latest: Sample | None = None
        self._history: deque[HistoryPoint] = deque(maxlen=max(1, history_length))
        self._waiters: list[_Waiter] = []
        self._thread: threading.Thread | None = None
        self._thread_stop = threading.Event()
        """The running thread's own stop flag."""
        self._stopping = False
        self._keep_until = 0.0
        """monotonic() until which the thread keeps sampling without another request."""
        self._sampling_since: float | None = None
        """monotonic() when the pass in progress began (None between passes)."""
        self.samples_taken = 0

    @property
    def latest(self) -> Sample | None:
        return self._latest

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stale_after(self) -> float:
        return stale_after(self.interval)

    def stuck_for(self) -> float | None:
        """Seconds the pass in progress has been blocked (NVML hung, a driver reset), once that
        is longer than `stale_after`; None while the sampler keeps up."""
        since = self._sampling_since
        if since is None or not self.running:
            return None
        blocked = time.monotonic() - since
        return blocked if blocked > self.stale_after else None

    def request(
        self, kernels: Iterable[WatchedKernel], client_interval: float | None = None
    ) -> None:
        """Note a client's interest and the kernels to watch; wake the thread for new kernels.

        `client_interval` is how often (seconds) that client polls: the thread keeps sampling
        for `KEEP_INTERVALS` of them when that is longer than `idle_timeout`, so a client that
        polls every few minutes finds a running sampler and a whole history, not one stopped
        after `idle_timeout` and restarted (its history dropped) by each of its requests.
        """
        watched = tuple(kernels)
        keep = self.idle_timeout
        if client_interval is not None and math.isfinite(client_interval) and client_interval > 0:
            keep = max(keep, KEEP_INTERVALS * min(client_interval, MAX_CLIENT_INTERVAL))
        with self._lock:
            self._keep_until = max(self._keep_until, time.monotonic() + keep)
            new = {k.pid for k in watched} - {k.pid for k in self._watched}
            self._watched = watched
            if self._stopping:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread_stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(self._thread_stop,),
                    name="qwen3-jupyter-sampler",
                    daemon=True,
                )
                self._thread.start()
            elif new:
                self._wake.set()

    async def current(self, timeout: float = 5.0) -> Sample | None:
        """The latest sample; waits (without blocking the loop) for the next one when needed.

        Needed when there is none, it is old, or it lacks a kernel that `request` just added, so
        a new kernel's row has its RSS on the first response. With a sample in hand the wait is
        short (a couple of intervals), and none at all once the sampler is stuck in NVML: an
        old sample now (the payload says how old) beats a request hanging on a hung driver.
        """
        sample = self._latest
        if sample is None:
            return None if self.stuck_for() is not None else await self._next(timeout)
        fresh = time.time() - sample.timestamp <= 2 * self.interval + 0.5
        if fresh and all(k.pid in sample.trees for k in self._watched):
            return sample
        if self.stuck_for() is not None:
            return sample
        return await self._next(min(timeout, 2 * self.interval + 0.5))

    async def _next(self, timeout: float) -> Sample | None:
        """The next published sample, or the latest one (perhaps None) after `timeout`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Sample] = loop.create_future()
        with self._lock:
            self._waiters.append(_Waiter(loop, future))
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return self._latest

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, close NVML and drop the reading; a later `request` starts afresh."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._thread_stop.set()  # that thread's own: one stuck in a read ends when it wakes
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._stopping = False
            self._thread = None
            self._keep_until = 0.0
            self._forget()

    def _forget(self) -> None:
        """Drop the reading and its history (caller holds the lock): after an idle period the
        sparkline must not join old readings to new ones as if nothing happened between."""
        self._latest = None
        self._history.clear()
        self._sampling_since = None

    def _run(self, stopped: threading.Event) -> None:
        """Sample until idle or `stopped`, this thread's own flag: the shared one is reset once
        `stop` gave up waiting, and a thread still stuck in an NVML read then polled on beside
        its replacement (doubled points, two readers open)."""
        reader = self._reader_factory()
        try:
            while True:
                with self._lock:
                    watched = self._watched
                    idle = time.monotonic() > self._keep_until
                    if stopped.is_set() or idle:
                        if not stopped.is_set():
                            self._thread = None
                            self._forget()
                        return
                    self._sampling_since = time.monotonic()
                sample, point = self._sample(reader, watched)
                if not self._publish(sample, point, stopped):
                    return
                self._wake.wait(self.interval)
                self._wake.clear()
        except Exception:
            _log.exception("qwen3-jupyter: the metrics sampler stopped")
        finally:
            reader.close()

    def _sample(
        self, reader: NvmlReader, watched: tuple[WatchedKernel, ...]
    ) -> tuple[Sample, HistoryPoint]:
        """One reading, and its point for the history (added when it is published)."""
        reading = reader.read()
        host = read_host()
        trees = process_trees(watched)
        point = HistoryPoint(
            timestamp=reading.timestamp,
            gpu_memory_used={gpu_key(g.index, g.mig_parent): g.memory_used for g in reading.gpus},
            host_used=host.used,
        )
        sample = Sample(
            nvml=reading,
            host=host,
            trees=trees,
            local_pids=existing_pids(reading),
            timestamp=time.time(),
            history=(),
            unread_gpus=reader.unread,
        )
        return sample, point

    def _publish(self, sample: Sample, point: HistoryPoint, stopped: threading.Event) -> bool:
        """Make `sample` the latest, its point part of the history; False (nothing published)
        once this thread was stopped: a thread `stop` gave up on, waking late, added a stale
        point to its replacement's sparkline."""
        with self._lock:
            if stopped.is_set():
                return False
            self._history.append(point)
            self.samples_taken += 1
            sample = replace(sample, history=tuple(self._history))
            self._latest = sample
            self._sampling_since = None
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.loop.call_soon_threadsafe(_resolve, waiter.future, sample)
        return True


def _resolve(future: asyncio.Future[Sample], sample: Sample) -> None:
    if not future.done():
        future.set_result(sample)
