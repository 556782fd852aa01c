"""The monitor in this process: polling thread, history, subscribers and decay signals.

NVML is the fake (tests/fake_nvml.py); host and torch figures are read for real.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from qwen3_jupyter import monitor as monitor_module
from qwen3_jupyter.memory import GiB, MiB
from qwen3_jupyter.monitor import SIGNALS_KEPT, Monitor, Snapshot
from qwen3_jupyter.nvml import NvmlReader
from tests.fake_nvml import LIBRARY_NOT_FOUND, SELF, FakeGpu, FakeNvml, FakeProcess


@dataclass(frozen=True)
class Call:
    """A `Result` as the latency signal reads it; 0.1 s to the first token by default."""

    latency_s: float
    completion_tokens: int
    time_to_first_token_s: float | None = 0.1
    model: str = "tiny"
    engine: str = "eager"
    device: str = "cpu"


@pytest.fixture()
def fake() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(used=2 * GiB, processes=[FakeProcess(SELF, GiB)]),
            FakeGpu(used=GiB, processes=[FakeProcess(123_456, GiB)]),
        ]
    )


@pytest.fixture()
def monitor(fake: FakeNvml) -> Iterator[Monitor]:
    m = Monitor(NvmlReader(fake.module), interval=0.05)
    yield m
    m.stop()


def _wait(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_sample_reads_gpus_host_and_this_kernels_share(monitor: Monitor) -> None:
    snap = monitor.sample()
    assert snap.nvml_available and snap.driver_version == "550.54.15"
    assert [g.gpu.index for g in snap.gpus] == [0, 1]
    assert all(g.visible for g in snap.gpus) or os.environ.get("CUDA_VISIBLE_DEVICES")
    assert snap.gpus[0].kernel_bytes == GiB
    # NVML lists this process on GPU 0, so its lists are of this PID namespace: missing from
    # GPU 1's whole list, the kernel has nothing there (the sidebar says 0 B too)
    assert snap.gpus[1].kernel_bytes == 0
    assert snap.gpus[0].torch is None  # torch has not initialised CUDA here
    assert snap.host.total > 0 and snap.host_peak_rss >= snap.host.process_rss > 0
    assert snap.warnings == ()
    assert monitor.latest() is snap


def test_thread_publishes_to_subscribers_and_stops_cleanly(
    monitor: Monitor, fake: FakeNvml
) -> None:
    before = threading.active_count()
    seen: list[Snapshot] = []
    unsubscribe = monitor.subscribe(seen.append)
    assert monitor.running and threading.active_count() == before + 1
    _wait(lambda: len(seen) >= 3)
    assert [s.seq for s in seen] == sorted({s.seq for s in seen})
    unsubscribe()
    count = len(seen)
    time.sleep(0.15)
    assert len(seen) <= count + 1
    monitor.stop()
    monitor.stop()
    assert not monitor.running and threading.active_count() == before
    assert fake.init_count == fake.shutdown_count == 1
    monitor.subscribe(seen.append)  # a stopped monitor starts again on use
    assert monitor.running
    monitor.stop()
    assert fake.init_count == fake.shutdown_count == 2


def test_a_poll_stuck_in_nvml_is_not_shut_down_under_nor_left_polling(fake: FakeNvml) -> None:
    """An NVML call can block for seconds (a GPU reset). No `stop` may call nvmlShutdown under
    it — not the one that gave up waiting, not a second one, not the stop of a thread started
    meanwhile — and a thread that outlived `stop` ends once its call returns, the last one out
    shutting NVML down."""
    monitor = Monitor(NvmlReader(fake.module), interval=0.05)
    polling = lambda: [t for t in threading.enumerate() if t.name == "qwen3-jupyter-monitor"]  # noqa: E731
    monitor.start()
    _wait(lambda: fake.reads >= 1)
    fake.reads_open.clear()
    _wait(lambda: fake.calls["nvmlDeviceGetCount"] > fake.reads)  # the thread is stuck now
    monitor.stop(timeout=0.1)
    monitor.stop(timeout=0.1)
    assert fake.open_handles == 1, "nvmlShutdown under a blocked call"
    monitor.start()  # a second thread, which gets stuck too (behind the first one's read)
    _wait(lambda: len(polling()) == 2)
    monitor.stop(timeout=0.1)
    assert fake.open_handles == 1 and len(polling()) == 2
    fake.reads_open.set()
    _wait(lambda: not polling())
    assert fake.open_handles == 0, "the last thread out shut NVML down"
    monitor.start()
    reads = fake.reads
    _wait(lambda: fake.reads > reads + 2)
    monitor.stop()
    assert not polling() and fake.open_handles == 0


def test_history_is_bounded_to_about_two_minutes(fake: FakeNvml) -> None:
    m = Monitor(NvmlReader(fake.module), interval=0.5, history_seconds=2.0)
    for _ in range(10):
        m.sample()
    assert len(m.history()) == 4
    m.interval = 0.1
    for _ in range(30):
        m.sample()
    assert len(m.history()) == 20
    m.stop()


def test_the_last_unsubscribe_stops_the_thread_unless_start_asked_for_it(
    monitor: Monitor, fake: FakeNvml
) -> None:
    before = threading.active_count()
    first, second = monitor.subscribe(lambda s: None), monitor.subscribe(lambda s: None)
    first()
    assert monitor.running, "one subscriber is left"
    second()
    assert not monitor.running and threading.active_count() == before
    polls = monitor.polls
    time.sleep(0.15)
    assert monitor.polls == polls, "polled with no subscriber"
    assert fake.init_count == fake.shutdown_count == 1
    monitor.subscribe(lambda s: None)()  # subscribe restarts it; unsubscribing stops it again
    assert not monitor.running and fake.init_count == fake.shutdown_count == 2
    monitor.start()
    monitor.subscribe(lambda s: None)()
    assert monitor.running, "an explicit start() keeps polling until stop()"


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (float("inf"), ValueError),
        (float("nan"), ValueError),
        (1e300, ValueError),
        (0, ValueError),
        (-1, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
def test_an_interval_no_poll_can_wait_is_refused_and_polling_goes_on(
    monitor: Monitor, fake: FakeNvml, seconds: object, error: type[Exception]
) -> None:
    """inf killed the polling thread (OverflowError from its timed wait, a traceback on
    stderr) and -1 was silently raised to 0.05: both are a one-line error now, the interval and
    the thread unchanged."""
    monitor.subscribe(lambda snapshot: None)
    with pytest.raises(error, match=r"^interval=.*: must be a positive number of seconds"):
        monitor.interval = seconds  # type: ignore[assignment]
    with pytest.raises(error):
        Monitor(NvmlReader(fake.module), interval=seconds)  # type: ignore[arg-type]
    assert monitor.interval == 0.05
    reads = fake.reads
    _wait(lambda: fake.reads > reads + 1)
    assert monitor.running


def test_a_short_positive_interval_is_raised_to_the_minimum(monitor: Monitor) -> None:
    monitor.interval = 0.001
    assert monitor.interval == monitor_module.MIN_INTERVAL
    monitor.interval = 3600
    assert monitor.interval == 3600.0


def test_error_mid_run_is_shown_and_the_thread_survives(monitor: Monitor, fake: FakeNvml) -> None:
    seen: list[Snapshot] = []
    monitor.subscribe(seen.append)
    _wait(lambda: len(seen) >= 2)
    fake.fail()
    _wait(lambda: seen[-1].nvml_reason == "NVML error: GPU is lost")
    assert seen[-1].gpus == () and monitor.running
    fake.heal()
    _wait(lambda: len(seen[-1].gpus) == 2)
    assert monitor.running


def test_a_failing_subscriber_does_not_stop_the_others_and_is_logged_once(
    monitor: Monitor, caplog: pytest.LogCaptureFixture
) -> None:
    """Each poll logged the failing update's whole traceback, into the cell that was running
    (a server's NaN KV-cache figure did so every half second)."""
    seen: list[int] = []

    def broken(_: Snapshot) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO, logger="qwen3_jupyter"):
        monitor.subscribe(broken)
        monitor.subscribe(lambda s: seen.append(s.seq))
        _wait(lambda: len(seen) >= 3)
    assert monitor.running
    said = [r.getMessage() for r in caplog.records if "gauge update failed" in r.getMessage()]
    assert said == ["qwen3_jupyter: gauge update failed: RuntimeError: boom"]


class _ReadThenPause(NvmlReader):
    """NVML answers, then the rest of the poll (host, children, torch) waits for `go`."""

    def __init__(self, module: object) -> None:
        super().__init__(module)  # type: ignore[arg-type]
        self.go, self.paused = threading.Event(), threading.Event()
        self.go.set()

    def read(self):  # type: ignore[no-untyped-def]
        reading = super().read()
        if not self.go.is_set():
            self.paused.set()
            self.go.wait(5)
        return reading


def test_a_cleanup_during_a_poll_resets_the_peak_all_the_same() -> None:
    """A poll that read NVML before a cleanup and folded its reading in after the cleanup
    reset the peaks made the pre-cleanup figure the "peak since the last cleanup"."""
    fake = FakeNvml([FakeGpu(used=70 * GiB, processes=[FakeProcess(SELF, 70 * GiB)])])
    reader = _ReadThenPause(fake.module)
    m = Monitor(reader, interval=0.05)
    m.start()
    try:
        _wait(lambda: m.latest() is not None)
        reader.go.clear()
        assert reader.paused.wait(5), "a poll read NVML at 70 GiB"
        fake.gpus[0].used = fake.gpus[0].processes[0].used = 2 * GiB
        m.note_cleanup(2 * GiB)
        reader.go.set()
        seq = m.latest().seq  # type: ignore[union-attr]
        _wait(lambda: m.latest().seq > seq + 2)  # type: ignore[union-attr]
        assert m.latest().gpus[0].peak_used == 2 * GiB  # type: ignore[union-attr]
    finally:
        m.stop()


def test_a_monitor_started_again_does_not_join_its_old_readings(fake: FakeNvml) -> None:
    m = Monitor(NvmlReader(fake.module), interval=0.05)
    m.start()
    _wait(lambda: len(m.history()) >= 3)
    m.stop()
    old = {s.seq for s in m.history()}
    m.start()
    try:
        _wait(lambda: m.latest() is not None and m.latest().seq not in old)  # type: ignore[union-attr]
        assert not old & {s.seq for s in m.history()}
    finally:
        m.stop()


def test_without_nvml_says_why_once_and_keeps_host_figures() -> None:
    fake = FakeNvml(init_error=LIBRARY_NOT_FOUND)
    m = Monitor(NvmlReader(fake.module))
    first, second = m.sample(), m.sample()
    assert not first.nvml_available and first.gpus == ()
    assert m.notice is not None and m.notice.startswith("NVML unavailable: no NVIDIA driver")
    assert second.host.process_rss > 0
    assert fake.calls["nvmlInit"] == 1
    m.stop()


def test_low_free_memory_warns_with_what_to_do(monitor: Monitor, fake: FakeNvml) -> None:
    fake.gpus[0].used = 80 * GiB - 512 * MiB - 100 * MiB
    (warning,) = monitor.sample().warnings
    assert warning.startswith("GPU 0: only 100.0 MiB free")
    assert "%qwen3_clean --verbose" in warning


def test_latency_decay_signal(monitor: Monitor) -> None:
    for _ in range(3):
        monitor.note_result(Call(1.09, 100))  # 0.99 s of decoding for 99 tokens
    monitor.note_result(Call(1.2, 100))
    monitor.note_result(Call(0.49, 40))  # same decode cost per token as 1.35 s for 100
    assert monitor.latency_warning() is None
    monitor.note_result(Call(2.1, 100))
    assert monitor.latency_warning() is None  # median of the last 3 is 1.25 s per 99 tokens
    monitor.note_result(Call(2.08, 100))
    warning = monitor.latency_warning()
    assert warning is not None and "2.0× the time per token" in warning
    assert "%qwen3_clean --verbose" in warning
    assert warning in monitor.sample().warnings


def test_a_slow_down_on_a_busy_machine_says_so(
    monitor: Monitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the quickstart on a shared 2-core machine, calls slowed by other processes were blamed
    on "memory pressure or fragmentation", with the memory flat."""
    from qwen3_jupyter import monitor as monitor_module

    for cost in (1.0, 1.0, 1.0, 3.0, 3.0, 3.0):
        monitor.note_result(Call(cost, 100))
    monkeypatch.setattr(monitor_module.os, "getloadavg", lambda: (4.2, 3.0, 2.0))
    monkeypatch.setattr(monitor_module.os, "cpu_count", lambda: 2)
    warning = monitor.latency_warning()
    assert warning is not None and "the machine is busy (load 4.2 on 2 cores)" in warning
    monkeypatch.setattr(monitor_module.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    quiet = monitor.latency_warning()
    assert quiet is not None and "memory pressure or fragmentation, or other work" in quiet


def test_short_calls_after_long_ones_are_not_a_slow_down(monitor: Monitor) -> None:
    """1-token calls cost their prompt and first token, not decoding: not compared at all."""
    for _ in range(3):
        monitor.note_result(Call(1.0, 48, time_to_first_token_s=0.06))
    for _ in range(3):
        monitor.note_result(Call(0.05, 1, time_to_first_token_s=0.05))
        monitor.note_result(Call(0.2, 4, time_to_first_token_s=0.05))
    monitor.note_result(Call(0.5, 48, time_to_first_token_s=None))  # no first-token time
    assert len(monitor.call_costs) == 3
    assert monitor.latency_warning() is None


def test_a_new_model_engine_or_load_starts_a_new_baseline(monitor: Monitor) -> None:
    fast = Call(1.1, 101)  # 10 ms per token
    slow = Call(3.1, 101)  # 30 ms per token: another model or engine, not a slow-down
    for changed in (
        dataclasses.replace(slow, model="Qwen3-8B"),
        dataclasses.replace(slow, engine="fast"),
        dataclasses.replace(slow, device="cuda:0"),
    ):
        monitor.reset_signals()
        for _ in range(3):
            monitor.note_result(fast)
        for _ in range(3):
            monitor.note_result(changed)
        assert monitor.latency_warning() is None, changed
        assert len(monitor.call_costs) == 3, changed
    monitor.reset_signals()
    for load in (1, 1, 1, 2, 2, 2):  # the same model unloaded and loaded again
        monitor.note_result(fast if load == 1 else slow, load=load)
    assert monitor.latency_warning() is None
    monitor.reset_signals()
    for call in (fast, fast, fast, slow, slow, slow):  # control: without a change it warns
        monitor.note_result(call, load=3)
    assert monitor.latency_warning() is not None


def test_retained_after_cleanup_drift_and_peak_reset(monitor: Monitor, fake: FakeNvml) -> None:
    fake.gpus[0].used = 30 * GiB
    monitor.sample()
    fake.gpus[0].used = 2 * GiB
    assert monitor.sample().gpus[0].peak_used == 30 * GiB
    monitor.note_cleanup(100 * MiB)
    assert monitor.sample().gpus[0].peak_used == 2 * GiB  # peaks restart after a cleanup
    monitor.note_cleanup(3 * GiB)  # a model was loaded in between: one step, then flat
    monitor.note_cleanup(3 * GiB + 2 * MiB)
    monitor.note_cleanup(3 * GiB + 40 * MiB)
    assert monitor.retained_warning() is None
    monitor.note_cleanup(3 * GiB + 80 * MiB)
    assert monitor.retained_warning() is None  # rising, but not at every one of the last 3
    monitor.note_cleanup(3 * GiB + 120 * MiB)
    warning = monitor.retained_warning()
    assert warning is not None and "3.0 GiB → 3.1 GiB over the last 4 cleanups" in warning
    assert "%qwen3_clean --verbose" in warning


def test_a_rise_explained_by_new_variables_or_imports_is_no_drift(monitor: Monitor) -> None:
    for step, explained in enumerate((False, False, True, False)):
        monitor.note_cleanup(GiB + step * 100 * MiB, explained=explained)
    assert monitor.retained_warning() is None  # one of the last three rises is explained
    monitor.note_cleanup(GiB + 400 * MiB)
    monitor.note_cleanup(GiB + 500 * MiB)
    warning = monitor.retained_warning()  # control: three unexplained rises in a row
    assert warning is not None and "with no new variables or imports to explain it" in warning


def test_module_singleton_and_shutdown() -> None:
    monitor_module.shutdown()
    m = monitor_module.get_monitor()
    assert monitor_module.get_monitor() is m and monitor_module.current_monitor() is m
    monitor_module.shutdown()
    assert monitor_module.current_monitor() is None


def test_kept_memory_and_server_loads_come_from_plugged_in_sources(monitor: Monitor) -> None:
    """The glue plugs sources in (the session's engines); a failing one is skipped."""
    from qwen3_jupyter.engines import KeptMemory
    from qwen3_jupyter.engines.server_metrics import ServerLoad
    from qwen3_jupyter.gauge_magics import kept_lines, server_loads

    class FakeEngine:
        def __init__(self, kept: tuple[KeptMemory, ...], load: ServerLoad | None) -> None:
            self._kept = kept
            if load is not None:
                self.server_load = lambda: load

        def kept_memory(self) -> tuple[KeptMemory, ...]:
            return self._kept

    class FakeSession:
        def __init__(self) -> None:
            load = ServerLoad("http://h:8000/v1", "vLLM", 0.5, 2, 0)
            cache = KeptMemory("decode cache", 448 * MiB, "cuda:0")
            self.engines = {"fast": FakeEngine((cache,), None), "url": FakeEngine((), load)}

        def kept_memory(self) -> tuple[KeptMemory, ...]:
            return tuple(k for e in self.engines.values() for k in e.kept_memory())

    session = FakeSession()
    assert monitor.sample().kept == () and monitor.sample().servers == ()
    undo_kept = monitor.watch_kept(lambda: kept_lines(session))
    undo_servers = monitor.watch_servers(lambda: server_loads(session))

    def broken() -> tuple[str, ...]:
        raise RuntimeError("boom")

    undo_broken = monitor.watch_kept(broken)
    snap = monitor.sample()
    assert snap.kept == (
        "decode cache 448.0 MiB on cuda:0, kept for speed "
        "(%qwen3 --eager or --unload gives it back)",
    )
    assert [s.url for s in snap.servers] == ["http://h:8000/v1"]
    undo_kept()
    undo_servers()
    undo_broken()
    assert monitor.sample().kept == () and monitor.sample().servers == ()


def test_a_failing_poll_is_one_log_line_once(
    monitor: Monitor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each failed poll logged its whole traceback, into the cell that was running."""

    def broken() -> None:
        raise AttributeError("no cuda yet")

    monkeypatch.setattr(monitor, "_poll", broken)
    with caplog.at_level(logging.INFO, logger="qwen3_jupyter"):
        for _ in range(3):
            assert monitor.sample().error == "memory poll failed: no cuda yet"
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in lines] == ["qwen3_jupyter: memory poll failed: no cuda yet"]
    assert lines[0].exc_info is None


def test_the_decay_signals_remember_a_bounded_number_of_calls_and_cleanups(
    monitor: Monitor,
) -> None:
    """A session of thousands of cells: the lists the warnings read stop growing, and the
    latency warning still compares the first 3 calls with the last 3."""
    for _ in range(3):
        monitor.note_result(Call(1.09, 100))
    for _ in range(1000):
        monitor.note_result(Call(1.1, 100))
        monitor.note_cleanup(100 * MiB)
    assert len(monitor.call_costs) == len(monitor.retained_history) == SIGNALS_KEPT
    assert monitor.latency_warning() is None
    for _ in range(3):
        monitor.note_result(Call(2.1, 100))
    warning = monitor.latency_warning()
    assert warning is not None and "2.0× the time per token" in warning
    for step in range(4):
        monitor.note_cleanup(100 * MiB + (step + 1) * 100 * MiB)
    assert monitor.retained_warning() is not None
