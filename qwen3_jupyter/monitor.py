"""The kernel's one memory monitor: a polling thread, a bounded history, subscribers, signals.

One `Monitor` per kernel process (`get_monitor()`), started on first use. Its thread is the only
place NVML is called in the kernel (NVML calls can block for tens of milliseconds, so they stay
off the main thread). Every poll becomes an immutable `Snapshot` handed to each subscriber on the
polling thread; views (the gauge) subscribe and never read memory themselves. The thread stops
on `%unload_ext qwen3_jupyter` and at interpreter exit, and NVML is shut down with it.

Two decay signals are kept here because they need the history of calls, not of polls:
`%qwen3` calls getting slower than the first calls (`note_result`), and memory left after
cleanup drifting upward (`note_cleanup`).

Two more kinds of figure come from sources the glue (`gauge_magics`) plugs in, so this module
knows nothing of sessions or engines: what engines keep in memory on purpose (`watch_kept`,
one line each) and the load of the servers a kernel talks to (`watch_servers`, read from their
Prometheus metrics — on this thread, with a short timeout, never on the kernel's main thread).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import numbers
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

import psutil

from .memory import (
    HostMemory,
    MiB,
    TorchDeviceMemory,
    added_memory,
    format_bytes,
    read_host,
    read_torch,
)
from .nvml import (
    GpuReading,
    NvmlReader,
    NvmlReading,
    cuda_devices,
    existing_pids,
    lists_every_process,
    pids_are_local,
    process_memory_by_uuid,
    torch_device_for,
)

if TYPE_CHECKING:
    from .engines.server_metrics import ServerLoad

_log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5
HISTORY_SECONDS = 120.0
LOW_FREE_BYTES = 500 * MiB
SIGNALS_KEPT = 64
"""Calls and cleanups remembered for the decay signals (each warning reads a few of them), so a
session of thousands of cells keeps no growing list."""
MIN_INTERVAL = 0.05
MAX_INTERVAL = 3600.0
"""An hour: far longer waits (inf, 1e300) overflow the polling thread's timed wait and kill it."""
INTERVAL_RULE = "must be a positive number of seconds, at most 3600 (e.g. 0.5)"
CLEAN_HINT = "%qwen3_clean --verbose shows what holds it"


@dataclass(frozen=True)
class GpuSample:
    """One GPU in one poll, with what this kernel holds on it.

    `kernel_bytes` is this kernel's memory according to NVML, None when NVML cannot tell (the
    kernel's PID is not in its list, as inside containers): never 0 for unknown. It is 0 where
    NVML's list is whole and of this PID namespace, leaves this kernel out, and torch has not
    used the GPU (as the server judges a notebook's VRAM, so the gauge and the sidebar agree).
    `torch` is torch's allocator on the same device (matched by UUID), None when torch does not
    use it.
    `peak_used` is the highest `memory_used` seen since the last cleanup. `cuda_index` is the
    N of torch's `cuda:N` for a GPU this kernel sees (None for the others: NVML numbers GPUs by
    bus, CUDA_VISIBLE_DEVICES renumbers them for torch). `kernel_listed` says NVML lists this
    kernel's process on the GPU, so an unknown `kernel_bytes` is the driver keeping the figure
    back (containers, some vGPUs), not a kernel that never touched it.
    """

    gpu: GpuReading
    visible: bool
    kernel_bytes: int | None
    torch: TorchDeviceMemory | None
    peak_used: int
    cuda_index: int | None = None
    kernel_listed: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Everything one poll saw. `gpus` holds every GPU NVML reports; `visible` marks ours."""

    seq: int
    timestamp: float
    interval: float
    host: HostMemory
    host_peak_rss: int
    nvml_available: bool
    nvml_reason: str | None
    driver_version: str | None
    gpus: tuple[GpuSample, ...]
    torch: tuple[TorchDeviceMemory, ...]
    warnings: tuple[str, ...]
    error: str | None = None
    kept: tuple[str, ...] = ()
    """What engines keep in memory on purpose, one line each ('decode cache 448 MiB on cuda:0,
    kept for speed (...)')."""
    servers: tuple[ServerLoad, ...] = ()
    """The load of each server this kernel talks to (the model's memory lives there)."""
    unread_gpus: frozenset[int] | None = frozenset()
    """NVML indices of GPUs counted but not read this poll (a lost GPU, a driver reset); None
    when NVML could not even count them."""

    @property
    def visible_gpus(self) -> tuple[GpuSample, ...]:
        """The GPUs this kernel sees, in torch's order (`cuda:0` first)."""
        mine = [g for g in self.gpus if g.visible]
        return tuple(sorted(mine, key=lambda g: g.cuda_index if g.cuda_index is not None else 0))


class _TimedResult(Protocol):
    @property
    def latency_s(self) -> float: ...

    @property
    def completion_tokens(self) -> int: ...


Subscriber = Callable[[Snapshot], None]
KeptSource = Callable[[], Sequence[str]]
"""Lines saying what is kept in memory on purpose (the glue asks the session's engines)."""
ServerSource = Callable[[], Sequence["ServerLoad"]]
"""The load of the servers this kernel talks to; called on the polling thread."""
_Item = TypeVar("_Item")


def interval_problem(seconds: object) -> str | None:
    """Why `seconds` cannot be a polling interval (None: it can). The magic and `gauge()`
    word their errors from this one rule."""
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        return f"{INTERVAL_RULE}, not {type(seconds).__name__}"
    if not 0 < float(seconds) <= MAX_INTERVAL:  # NaN fails both comparisons
        return INTERVAL_RULE
    return None


def checked_interval(seconds: float) -> float:
    """`seconds` as a float, at least MIN_INTERVAL (a shorter one is raised to it), or a
    one-line TypeError/ValueError (`interval=...: rule`) for one no poll can wait."""
    problem = interval_problem(seconds)
    if problem is not None:
        wrong_type = isinstance(seconds, bool) or not isinstance(seconds, numbers.Real)
        raise (TypeError if wrong_type else ValueError)(f"interval={seconds!r}: {problem}")
    return max(MIN_INTERVAL, float(seconds))


MIN_DECODE_TOKENS = 8
"""Calls shorter than this are not compared: their time is mostly prompt processing and
first-token latency, so a run of short calls would read as a slow-down."""


def decode_seconds_per_token(result: _TimedResult) -> float | None:
    """Time per generated token after the first ((latency - time to first token) / (tokens -
    1)): what memory pressure slows, independent of prompt length and answer length. None for
    a call that cannot be compared (too short, no first-token time, interrupted or failed)."""
    tokens = int(getattr(result, "completion_tokens", 0) or 0)
    first = getattr(result, "time_to_first_token_s", None)
    if tokens < MIN_DECODE_TOKENS or first is None:
        return None
    if getattr(result, "stop_reason", "") == "interrupted" or getattr(result, "error", None):
        return None
    decode = float(result.latency_s) - float(first)
    return decode / (tokens - 1) if decode > 0 else None


def baseline_key(result: _TimedResult, load: object = None) -> tuple[object, ...]:
    """Calls are compared only with calls of the same model, engine and device (and the same
    load of the model: `load` changes when it is unloaded or reloaded)."""
    model, engine, device = (getattr(result, n, None) for n in ("model", "engine", "device"))
    return (model, engine, device, load)


def busy_machine() -> str:
    """ "load 4.2 on 2 cores" when more is waiting to run than the machine has cores, else "".
    Why: in the quickstart on a shared 2-core machine, calls slowed by other processes were
    blamed on memory pressure, with the memory flat."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except (AttributeError, OSError):  # not on this platform
        return ""
    return f"load {load:.1f} on {cores} core{'s' if cores != 1 else ''}" if load > cores else ""


class Monitor:
    """Polls memory on one daemon thread and publishes snapshots to subscribers.

    Thread-safe: subscribe, unsubscribe, `interval`, `note_*` and `stop` may be called from any
    thread. Subscribers run on the polling thread; one that raises is logged and kept.
    """

    def __init__(
        self,
        reader: NvmlReader | None = None,
        interval: float = DEFAULT_INTERVAL,
        history_seconds: float = HISTORY_SECONDS,
        low_free_bytes: int = LOW_FREE_BYTES,
    ) -> None:
        self._reader = reader if reader is not None else NvmlReader()
        self._interval = checked_interval(interval)
        self._history_seconds = history_seconds
        self.low_free_bytes = low_free_bytes
        self._lock = threading.RLock()
        self._logged: set[str | None] = set()
        """Poll errors already logged (each once: a poll every half second would repeat it)."""
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lingering: list[threading.Thread] = []
        """Threads `stop` gave up waiting for (stuck in an NVML call): NVML stays open for them."""
        self._thread: threading.Thread | None = None
        self._wanted = False
        """`start` was called: poll even with no subscriber (else the last unsubscribe stops)."""
        self._subscribers: list[Subscriber] = []
        self._history: deque[Snapshot] = deque(maxlen=self._history_length())
        self._seq = 0
        self._host_peak = 0
        self._gpu_peaks: dict[str, int] = {}
        self._peaks_reset = 0
        """How many cleanups reset the peaks: a poll that read before one does not fold in."""
        self._call_costs: list[float] = []
        self._cost_key: tuple[object, ...] | None = None
        self._retained: list[int] = []
        self._explained: list[bool] = []
        """Per noted cleanup: whether new variables or imports account for a rise."""
        self._children: set[int] = set()
        self._children_at = 0.0
        self._notice: str | None = None
        self._kept_sources: list[KeptSource] = []
        self._server_sources: list[ServerSource] = []
        self.thread_cpu_seconds = 0.0
        self.polls = 0

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the polling thread if it is not running (idempotent); it keeps polling with no
        subscriber until `stop` (a caller that reads `latest()` itself asked for it)."""
        with self._lock:
            self._wanted = True
        self._ensure_running()

    def _ensure_running(self) -> None:
        with self._lock:
            if self.running:
                return
            # Each thread has its own stop and wake signals: one still stuck in an NVML call (a
            # GPU reset) when `stop` gave up waiting must neither carry on beside its successor
            # nor swallow the successor's wake-up.
            self._stopping, self._wake = threading.Event(), threading.Event()
            # Readings from before a stop are not joined to the new thread's: a gauge shown
            # after `--stop` drew them as the last minutes, and its first text was the old one.
            self._history.clear()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stopping, self._wake),
                name="qwen3-jupyter-monitor",
                daemon=True,
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the thread, then shut NVML down (the thread does, when an NVML call
        holds it past `timeout`: never shut down under a call). Subscribers stay registered."""
        with self._lock:
            self._wanted = False
            thread = self._detach()
        self._finish(thread, timeout)

    def _detach(self) -> threading.Thread | None:
        """Tell the thread to end and forget it (call with the lock held)."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        self._wake.set()
        return thread

    def _finish(self, thread: threading.Thread | None, timeout: float) -> None:
        """Join a detached thread (remembering it if stuck), then shut NVML down if unused."""
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                with self._lock:
                    self._lingering.append(thread)
        self._close_unless_in_use()

    def _close_unless_in_use(self) -> None:
        """nvmlShutdown, unless a polling thread is running or still stuck in a call: the
        last of them to end does it."""
        current = threading.current_thread()
        with self._lock:
            self._lingering = [t for t in self._lingering if t.is_alive() and t is not current]
            in_use = self._thread is not None or bool(self._lingering)
        if not in_use:
            self._reader.close()  # the reader's own lock keeps a new thread's read out

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        """Seconds between polls (0.05 to 3600, else a one-line error and the interval stays);
        the history keeps covering ~2 minutes."""
        seconds = checked_interval(seconds)
        with self._lock:
            self._interval = seconds
            self._history = deque(self._history, maxlen=self._history_length())
        self._wake.set()

    def _history_length(self) -> int:
        return max(4, round(self._history_seconds / self._interval))

    # -- subscribers ----------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(snapshot)` after every poll (starting the thread); returns the undo."""
        with self._lock:
            self._subscribers.append(callback)
        self._ensure_running()
        return lambda: self.unsubscribe(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop sending `callback` snapshots; the last one out stops the thread (unless `start`
        asked for it), so a closed gauge leaves no thread polling for nobody."""
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)
            idle = not self._subscribers and not self._wanted and self._thread is not None
            thread = self._detach() if idle else None
        if idle:
            self._finish(thread, timeout=1.0)

    # -- sources --------------------------------------------------------------------------------

    def watch_kept(self, source: KeptSource) -> Callable[[], None]:
        """Show what `source()` says is kept on purpose in every snapshot; returns the undo."""
        with self._lock:
            self._kept_sources.append(source)
        return lambda: self._forget(self._kept_sources, source)

    def watch_servers(self, source: ServerSource) -> Callable[[], None]:
        """Show the server loads `source()` reads in every snapshot; returns the undo."""
        with self._lock:
            self._server_sources.append(source)
        return lambda: self._forget(self._server_sources, source)

    def _forget(self, sources: list[_Item], source: _Item) -> None:
        with self._lock:
            if source in sources:
                sources.remove(source)

    @staticmethod
    def _read(sources: list[Callable[[], Sequence[_Item]]], what: str) -> tuple[_Item, ...]:
        """Everything the sources give; a failing source is logged and skipped."""
        items: list[_Item] = []
        for source in sources:
            try:
                items.extend(source())
            except Exception:
                _log.exception("qwen3_jupyter: reading %s failed", what)
        return tuple(items)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self._history[-1] if self._history else None

    def history(self) -> tuple[Snapshot, ...]:
        """The snapshots of the last ~2 minutes, oldest first."""
        with self._lock:
            return tuple(self._history)

    @property
    def notice(self) -> str | None:
        """Why NVML is not in use (one line), once known; None while NVML works."""
        return self._notice

    # -- decay signals --------------------------------------------------------------------------

    def note_result(self, result: _TimedResult, load: object = None) -> None:
        """Record one finished `%qwen3` call (a `Result`) for the latency-decay signal: its
        decode time per token, when it can be compared (`decode_seconds_per_token`). A call of
        another model, engine, device or `load` starts a new baseline."""
        cost = decode_seconds_per_token(result)
        if cost is None:
            return
        key = baseline_key(result, load)
        with self._lock:
            if key != self._cost_key:
                self._call_costs.clear()
                self._cost_key = key
            self._call_costs.append(cost)
            if len(self._call_costs) > SIGNALS_KEPT:  # the warning reads the first 3 and the
                del self._call_costs[3]  # last 3: a long session must not grow this list

    def note_cleanup(self, retained_bytes: int, explained: bool = False) -> None:
        """Record the memory left after one cleanup, and restart the peaks from here.

        `explained`: something since the last cleanup accounts for a rise (new variables in
        the notebook, new imports), so this step is no sign of references kept by accident."""
        with self._lock:
            self._retained.append(int(retained_bytes))
            self._explained.append(explained)
            if len(self._retained) > SIGNALS_KEPT:  # the warning reads the last 4
                del self._retained[0], self._explained[0]
            self._host_peak = 0
            self._gpu_peaks.clear()
            self._peaks_reset += 1

    @property
    def call_costs(self) -> tuple[float, ...]:
        """Decode seconds per token of the comparable `%qwen3` calls since the baseline (the
        same model, engine and load), oldest first."""
        with self._lock:
            return tuple(self._call_costs)

    @property
    def retained_history(self) -> tuple[int, ...]:
        """Bytes left after each cleanup noted, oldest first."""
        with self._lock:
            return tuple(self._retained)

    def reset_signals(self) -> None:
        with self._lock:
            self._call_costs.clear()
            self._cost_key = None
            self._retained.clear()
            self._explained.clear()

    def latency_warning(self) -> str | None:
        """Set when the last 3 comparable calls (same model, engine and load, at least
        MIN_DECODE_TOKENS tokens) decode clearly slower per token than the first 3."""
        costs = self._call_costs
        if len(costs) < 6:
            return None
        first, last = statistics.median(costs[:3]), statistics.median(costs[-3:])
        if first <= 0 or last <= 1.25 * first:
            return None
        busy = busy_machine()
        why = (
            f"the machine is busy ({busy}), or memory pressure"
            if busy
            else "memory pressure or fragmentation, or other work on the machine"
        )
        return (
            f"%qwen3 is slowing down: the last 3 calls took {last / first:.1f}× the time per "
            f"token of the first 3 — {why}; {CLEAN_HINT}"
        )

    def retained_warning(self) -> str | None:
        """Set when the memory left after cleanup rose at each of the last 3 cleanups.

        Three rises in a row (each over 8 MiB, 64 MiB in all) are needed, so loading a model
        between two cleanups — one step up, then flat — does not count as drift, and none of
        the three may be explained by new variables or imports (data kept on purpose).
        """
        recent = self._retained[-4:]
        if len(recent) < 4 or any(self._explained[-3:]):
            return None
        steps = [b - a for a, b in itertools.pairwise(recent)]
        if min(steps) <= 8 * MiB or recent[-1] - recent[0] < 64 * MiB:
            return None
        return (
            f"memory left after cleanup keeps growing: {format_bytes(recent[0])} → "
            f"{format_bytes(recent[-1])} over the last 4 cleanups, with no new variables or "
            f"imports to explain it — something keeps references; {CLEAN_HINT}"
        )

    # -- polling --------------------------------------------------------------------------------

    def _run(self, stopping: threading.Event, wake: threading.Event) -> None:
        try:
            while not stopping.is_set():
                started = time.monotonic()
                snapshot = self.sample()
                for callback in list(self._subscribers):
                    if stopping.is_set():
                        break
                    try:
                        callback(snapshot)
                    except Exception as exc:  # logged once: each poll's traceback landed in
                        said = f"gauge update failed: {type(exc).__name__}: {exc}"  # the cell
                        if said not in self._logged:
                            self._logged.add(said)
                            _log.exception("qwen3_jupyter: %s", said)
                self.thread_cpu_seconds = time.thread_time()
                wake.clear()
                wake.wait(max(0.0, self._interval - (time.monotonic() - started)))
        finally:
            if stopping.is_set():  # `stop` may have left the shutdown to this thread
                self._close_unless_in_use()

    def sample(self) -> Snapshot:
        """Poll once, append to the history and return the snapshot. Never raises."""
        try:
            snapshot = self._poll()
        except Exception as exc:  # a reader failing must not kill the thread
            snapshot = self._failed(f"memory poll failed: {exc}")
            if snapshot.error not in self._logged:  # one line per new error, not per poll
                self._logged.add(snapshot.error)
                _log.warning("qwen3_jupyter: %s", snapshot.error)
                _log.debug("qwen3_jupyter: memory poll failed", exc_info=True)
        with self._lock:
            self._history.append(snapshot)
            self.polls += 1
        return snapshot

    def _poll(self) -> Snapshot:
        with self._lock:  # a cleanup that resets the peaks while this poll reads: its reading
            resets = self._peaks_reset  # predates the cleanup, and is no peak since it
        nvml = self._reader.read()
        host = self._with_children(read_host())
        torch_devices = read_torch()
        if not nvml.available and self._notice != nvml.reason:
            self._notice = nvml.reason
            _log.info("qwen3_jupyter: %s", nvml.reason)
        gpus = self._gpu_samples(nvml, torch_devices, resets)
        with self._lock:
            if self._peaks_reset == resets:
                self._host_peak = max(self._host_peak, host.process_rss)
            self._seq += 1
            seq, host_peak = self._seq, max(self._host_peak, host.process_rss)
            kept_sources, server_sources = list(self._kept_sources), list(self._server_sources)
        kept = self._read(kept_sources, "kept memory")
        servers = self._read(server_sources, "server metrics")
        warnings = self._warnings(host, gpus)
        return Snapshot(
            seq=seq,
            timestamp=time.time(),
            interval=self._interval,
            host=host,
            host_peak_rss=host_peak,
            nvml_available=nvml.available,
            nvml_reason=nvml.reason,
            driver_version=nvml.driver_version,
            gpus=gpus,
            torch=torch_devices,
            warnings=warnings,
            kept=tuple(str(line) for line in kept),
            servers=servers,
            unread_gpus=self._reader.unread if nvml.available else frozenset(),
        )

    def _gpu_samples(
        self,
        nvml: NvmlReading,
        torch_devices: tuple[TorchDeviceMemory, ...],
        resets: int | None = None,
    ) -> tuple[GpuSample, ...]:
        """One sample per GPU; its peak folds in unless a cleanup reset the peaks since
        `resets` (the poll read before that cleanup)."""
        if not nvml.gpus:
            return ()
        unread = self._reader.unread or frozenset()
        visible = cuda_devices(nvml, torch_devices or None, unread=unread)
        order = {g.uuid: index for g, index in visible}
        for gpu, _ in visible:  # torch's own index where it knows the device
            device = torch_device_for(gpu, torch_devices)
            if device is not None:
                order[gpu.uuid] = device.index
        pids = self._pids()
        mine = process_memory_by_uuid(nvml, pids)
        local = pids_are_local(nvml, existing_pids(nvml))
        samples = []
        with self._lock:
            for gpu in nvml.gpus:
                peak = max(self._gpu_peaks.get(gpu.uuid, 0), gpu.memory_used)
                if resets is None or self._peaks_reset == resets:
                    self._gpu_peaks[gpu.uuid] = peak
                listed = any(p.pid in pids for p in gpu.processes)
                torch_memory = torch_device_for(gpu, torch_devices)
                kernel_bytes = mine.get(gpu.uuid)
                if not listed and torch_memory is None and local and lists_every_process(gpu):
                    kernel_bytes = 0  # NVML lists this namespace's processes, not this one
                samples.append(
                    GpuSample(
                        gpu=gpu,
                        visible=gpu.uuid in order,
                        kernel_bytes=kernel_bytes,
                        torch=torch_memory,
                        peak_used=peak,
                        cuda_index=order.get(gpu.uuid),
                        kernel_listed=listed,
                    )
                )
        return tuple(samples)

    def _with_children(self, host: HostMemory) -> HostMemory:
        """Host memory with this kernel's figure counting what its child processes (data loader
        workers) add (`added_memory`), as its GPU share does and as the sidebar counts a
        notebook."""
        extra = 0
        for pid in self._pids() - {os.getpid()}:
            try:
                extra += added_memory(pid)
            except (psutil.Error, OSError):
                continue  # a worker that just ended
        return replace(host, process_rss=host.process_rss + extra) if extra else host

    def _pids(self) -> set[int]:
        """This process and its children (data loader workers), refreshed every 5 s."""
        now = time.monotonic()
        if now - self._children_at > 5.0:
            self._children_at = now
            try:
                self._children = {c.pid for c in psutil.Process().children(recursive=True)}
            except Exception:
                self._children = set()
        return {os.getpid(), *self._children}

    def _warnings(self, host: HostMemory, gpus: tuple[GpuSample, ...]) -> tuple[str, ...]:
        warnings = []
        shown = [g for g in gpus if g.visible]
        for sample in shown:
            free = sample.gpu.memory_free
            if free < self.low_free_bytes:
                warnings.append(
                    f"{sample.gpu.label}: only {format_bytes(free)} free (below "
                    f"{format_bytes(self.low_free_bytes)}) — free memory before the next call; "
                    f"{CLEAN_HINT}"
                )
        if not shown and host.available < self.low_free_bytes:
            warnings.append(
                f"host: only {format_bytes(host.available)} available (below "
                f"{format_bytes(self.low_free_bytes)}) — {CLEAN_HINT}"
            )
        with self._lock:
            for signal in (self.latency_warning(), self.retained_warning()):
                if signal:
                    warnings.append(signal)
        return tuple(warnings)

    def _failed(self, error: str) -> Snapshot:
        with self._lock:
            self._seq += 1
            previous = self._history[-1] if self._history else None
        host = previous.host if previous else HostMemory(0, 0, 0, 0)
        return Snapshot(
            seq=self._seq,
            timestamp=time.time(),
            interval=self._interval,
            host=host,
            host_peak_rss=self._host_peak,
            nvml_available=False,
            nvml_reason=None,
            driver_version=None,
            gpus=(),
            torch=(),
            warnings=(),
            error=error,
        )


_MONITOR: Monitor | None = None
_MONITOR_LOCK = threading.Lock()


def get_monitor() -> Monitor:
    """The kernel's monitor, created (not started) on first use."""
    global _MONITOR
    with _MONITOR_LOCK:
        if _MONITOR is None:
            _MONITOR = Monitor()
        return _MONITOR


def current_monitor() -> Monitor | None:
    """The monitor if one was created, without creating it."""
    return _MONITOR


def shutdown() -> None:
    """Stop the monitor's thread, close NVML and forget the monitor (unload, exit)."""
    global _MONITOR
    with _MONITOR_LOCK:
        monitor, _MONITOR = _MONITOR, None
    if monitor is not None:
        monitor.stop()


atexit.register(shutdown)
