"""The gauge through real kernels: what the kernel sends on iopub while cells run.

NVML is the fake pynvml (installed in the kernel by `tests.fake_nvml.child_env`); everything
above it — monitor thread, widgets, comm messages — is the real thing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import comm
import psutil
import pytest

from qwen3_jupyter.gauge import (
    HEARTBEAT_SECONDS,
    Gauge,
    device_bytes,
    footer_html,
    footer_text,
    gpu_label,
    gpu_row,
    host_row,
    row_views,
    short_bytes,
    sparkline_svg,
    unbroken,
)
from qwen3_jupyter.memory import GiB, MiB, TorchDeviceMemory
from qwen3_jupyter.monitor import Monitor, Snapshot
from qwen3_jupyter.nvml import NvmlReader, existing_pids
from qwen3_jupyter.server.kernels import attribute
from qwen3_jupyter.server.sampler import WatchedKernel, process_trees
from tests import background_check
from tests.fake_nvml import (
    DRIVER_NOT_LOADED,
    LIBRARY_NOT_FOUND,
    SELF,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    child_env,
    gpu_uuid,
)
from tests.kernel import Execution, Kernel, ok
from tests.kernel_pool import KernelPool


class WidgetStates:
    """Widget models as the front end would hold them, rebuilt from comm messages."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def feed(self, messages: list[dict[str, Any]]) -> list[tuple[float, str, dict[str, Any]]]:
        """Apply messages; returns (received_at, comm_id, changed state) for every update."""
        updates = []
        for msg in messages:
            content = msg["content"]
            if msg["msg_type"] == "comm_open" and content.get("target_name") == "jupyter.widget":
                self.states[content["comm_id"]] = dict(content["data"]["state"])
            elif msg["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
                state = content["data"]["state"]
                self.states.setdefault(content["comm_id"], {}).update(state)
                updates.append((msg["received_at"], content["comm_id"], state))
        return updates

    def html(self) -> list[str]:
        """The HTML widgets' values, with the non-breaking spaces of row text as spaces."""
        return [
            s["value"].replace("\xa0", " ")
            for s in self.states.values()
            if s.get("_model_name") == "HTMLModel"
        ]

    def ids(self, model_name: str) -> list[str]:
        return [cid for cid, s in self.states.items() if s.get("_model_name") == model_name]

    def find(self, needle: str) -> str:
        """The comm id of the HTML widget whose value contains `needle`."""
        (comm_id,) = [
            cid
            for cid, s in self.states.items()
            if s.get("_model_name") == "HTMLModel" and needle in s.get("value", "")
        ]
        return comm_id

    def text(self) -> str:
        return "\n".join(self.html())


def _show(kernel: Kernel, line: str = "%qwen3_gauge") -> tuple[Execution, WidgetStates]:
    """Display a gauge and wait until it shows its first reading."""
    shown = kernel.run(f"{line}\nimport time; time.sleep(0.4)")
    assert shown.status == "ok", shown.error
    widgets = WidgetStates()
    widgets.feed(shown.messages)
    assert shown.of_type("display_data"), "no widget was displayed"
    return shown, widgets


def test_updates_arrive_while_a_cell_is_busy(kernel: Kernel) -> None:
    """Host memory (no NVML here): the bar's text changes during a 2 s allocating cell."""
    _, widgets = _show(kernel, "%qwen3_gauge --interval 0.1")
    host_text = widgets.find("RSS")
    assert "NVML unavailable" in widgets.text() or "NVML ·" in widgets.text()
    started = time.monotonic()
    busy = kernel.run(
        "import time\n"
        "blocks = []\n"
        "for i in range(10):\n"
        "    blocks.append(bytearray(b'x') * (40 * 2**20))\n"
        "    time.sleep(0.1)\n"
        "del blocks\n"
        "for i in range(5):\n"
        "    hold = bytearray(b'x') * ((i + 1) * 60 * 2**20)\n"
        "    time.sleep(0.2)\n"
        "del hold\n"
    )
    finished = time.monotonic()
    assert busy.status == "ok", busy.error
    updates = widgets.feed(busy.messages)
    texts = [(at, state["value"]) for at, cid, state in updates if cid == host_text]
    assert len({value for _, value in texts}) >= 5, texts
    times = [at for at, _ in texts]
    assert times[0] - started < 0.8, "first update came late"
    assert times[-1] - times[0] > 1.0, "updates were not spread over the busy cell"
    assert finished - times[-1] < 1.0
    (bar,) = widgets.ids("FloatProgressModel")
    assert any(cid == bar for _, cid, _ in updates), "the bar itself never moved"


def test_gauge_api_and_stop(kernel: Kernel) -> None:
    result = kernel.run(
        "import qwen3_jupyter, threading, time\n"
        "g = qwen3_jupyter.gauge(interval=0.2)\n"
        "g2 = qwen3_jupyter.gauge()\n"
        "time.sleep(0.3)\n"
        "print(type(g).__name__, g.monitor is g2.monitor, g.monitor.subscriber_count >= 2)\n"
        "g2.close()\n"
        "from qwen3_jupyter.gauge import open_gauges\n"
        "print(g.monitor.interval, g2 not in open_gauges())\n"
    )
    assert result.status == "ok", result.error
    assert result.stdout.split() == ["Gauge", "True", "True", "0.2", "True"]
    stopped = kernel.run("%qwen3_gauge --stop")
    assert "gauge stopped" in stopped.stdout
    threads = kernel.value(
        "[t.name for t in __import__('threading').enumerate() if t.name.startswith('qwen3')]"
    )
    assert threads == []
    for value in ("-1", "0", "inf", "nan", "1e300"):
        bad = kernel.run(f"%qwen3_gauge --interval {value}")
        assert bad.reply["ename"] == "UsageError", bad.reply
        assert bad.reply["evalue"] == (
            "--interval must be a positive number of seconds, at most 3600 (e.g. 0.5)"
        )
        assert bad.stderr.count("\n") == 1, bad.stderr
    for value in ("-1", "float('inf')"):  # -1 was silently raised to 0.05, inf killed the thread
        api = kernel.run(f"qwen3_jupyter.gauge(interval={value})")
        assert api.reply["ename"] == "ValueError", api.reply
        assert api.reply["evalue"].endswith(
            ": must be a positive number of seconds, at most 3600 (e.g. 0.5)"
        )
    assert (
        kernel.value("[t.name for t in threading.enumerate() if t.name.startswith('qwen3')]") == []
    )
    typo = kernel.run("%qwen3_gauge --stp")
    assert "unknown option --stp (did you mean --stop?) (see %qwen3_gauge?)" in typo.stderr
    short = kernel.run("%qwen3_gauge --int 0.2")
    assert "unknown option --int (did you mean --interval?)" in short.stderr
    helped = kernel.run("%qwen3_gauge?")
    assert "--interval" in str(helped.reply) and "CUDA_VISIBLE_DEVICES" in str(helped.reply)


def test_running_a_gauge_cell_again_closes_the_gauge_it_showed_before(kernel: Kernel) -> None:
    """Running the cell again replaces its output in the browser, but the old gauge stayed
    live: four runs, four gauges polling and sending updates (108 widget models)."""
    ok(kernel, "from qwen3_jupyter.gauge import open_gauges\nimport ipywidgets, qwen3_jupyter")
    count = "(len(open_gauges()), len(ipywidgets.Widget.widgets))"
    _, before = kernel.value(count)
    for _ in range(3):
        ok_run = kernel.run("%qwen3_gauge", cell_id="cell-a")
        assert ok_run.status == "ok", ok_run.error
    gauges, widgets = kernel.value(count)
    assert gauges == 1
    other = kernel.run("%qwen3_gauge", cell_id="cell-b")  # another cell's gauge stays
    assert other.status == "ok" and kernel.value(count)[0] == 2
    again = kernel.run("g = qwen3_jupyter.gauge()\ng", cell_id="cell-b")  # the API too
    assert again.status == "ok"
    assert kernel.value(count) == (2, before + 2 * (widgets - before))
    assert kernel.value("g in open_gauges()")
    # Two gauges of one run (one layout): the first stays live; the next run closes both.
    both = (
        "g1 = qwen3_jupyter.gauge()\ng2 = qwen3_jupyter.gauge(compact=True)\n"
        "ipywidgets.HBox([g1, g2])"
    )
    shown = kernel.run(both, cell_id="cell-c")
    assert shown.status == "ok", shown.error
    assert kernel.value("(g1 in open_gauges(), g2 in open_gauges())") == (True, True)
    assert kernel.run(both, cell_id="cell-c").status == "ok"
    assert kernel.value("len(open_gauges())") == 4
    # Run again as something that shows no gauge (edited, or failing first): the browser
    # dropped the old output, and its gauges polled on for nobody until --stop.
    assert kernel.run("print('edited')", cell_id="cell-c").status == "ok"
    assert kernel.value("len(open_gauges())") == 2
    assert kernel.run("%qwen3_gauge --interval 0", cell_id="cell-a").status == "error"
    assert kernel.value("len(open_gauges())") == 1
    ok(kernel, "%qwen3_gauge --stop")
    closed = kernel.run("g")  # shown again once closed: its last reading, not a 2 KB repr
    plain = closed.result() or ""
    assert plain.startswith("[qwen3] memory gauge (closed; its last reading)\n"), plain
    assert "VBox" not in plain and len(plain) < 1000, plain


def test_inline_gauge_leaves_a_static_copy_and_no_live_widget(kernel: Kernel) -> None:
    result = kernel.run(
        "import time\n"
        "from qwen3_jupyter.gauge import inline_gauge, open_gauges\n"
        "from qwen3_jupyter.monitor import get_monitor\n"
        "gauges, subscribers = len(open_gauges()), get_monitor().subscriber_count\n"
        "with inline_gauge() as g:\n"
        "    during = get_monitor().subscriber_count - subscribers\n"
        "    time.sleep(0.6)\n"
        "print(g.comm is None, during, len(open_gauges()) - gauges,\n"
        "      g.monitor.subscriber_count - subscribers)"
    )
    assert result.status == "ok", result.error
    # another test's gauge may still be open in this module's kernel: counted as changes
    assert result.stdout.split() == ["True", "1", "0", "0"], (
        "the widget or its subscription is live"
    )
    (shown,) = result.of_type("display_data")
    assert "application/vnd.jupyter.widget-view+json" in shown["content"]["data"]
    # Where the widget cannot be drawn (an untrusted notebook, or one saved without widget
    # state) its plain form shows: the reading, not the 2 KB `Gauge(children=(VBox(...`.
    plain = shown["content"]["data"]["text/plain"]
    assert plain.startswith("[qwen3] memory gauge") and "RSS" in plain, plain
    assert "<" not in plain and "children=" not in plain, plain
    (static,) = result.texts("text/html")
    assert "qwen3-gauge-static" in static and "RSS" in static
    # and the static copy's plain form (was `<IPython.core.display.HTML object>`)
    (update,) = result.of_type("update_display_data")
    copy = update["content"]["data"]["text/plain"]
    assert "RSS" in copy and "memory as read at" in copy and "<" not in copy, copy


def test_qwen3_calls_and_cleanups_feed_the_decay_signals(kernel: Kernel) -> None:
    asked = kernel.run("%qwen3 --greedy --no-think --max-new-tokens 12 hello")
    assert asked.status == "ok", asked.error
    cleaned = kernel.run(
        "from qwen3_jupyter import cleanup\n"
        "from qwen3_jupyter.monitor import get_monitor\n"
        "cleanup(); cleanup()\n"
        "_m = get_monitor()\n"
        "from qwen3_jupyter.session import SESSION\n"
        "comparable = SESSION.last_result.completion_tokens >= 8\n"
        "print(len(_m.call_costs) == comparable, len(_m.retained_history),"
        " min(_m.retained_history) > 0)"
    )
    assert cleaned.status == "ok", cleaned.error
    assert cleaned.stdout.split() == ["True", "2", "True"]


@pytest.mark.no_preload  # the import of torch in a cell is part of what it checks
def test_drift_is_not_new_variables_or_imports_but_a_growing_hidden_holder(
    fresh_kernel: Kernel,
) -> None:
    """Measured before: four cells each keeping a new 32 MiB tensor (or importing libraries)
    made the gauge warn "memory left after cleanup keeps growing … something keeps
    references". Data growing where no new name shows it (a list filling up) still warns."""
    k = fresh_kernel
    ok(k, "%load_ext qwen3_jupyter")
    ok(k, "import torch\nfrom qwen3_jupyter.monitor import get_monitor\n%qwen3_autoclean on")
    for name in "abcde":
        ok(k, f"{name} = torch.ones(8 * 2**20)")  # 32 MiB each, kept on purpose
    # One expression: a cell of its own would add a flat cleanup before the check.
    noted, warning = k.value(
        "(len(get_monitor().retained_history), get_monitor().retained_warning())"
    )
    assert noted >= 5 and warning is None, warning
    ok(k, "leaky = []")
    for _ in range(4):
        ok(k, "leaky.append(torch.ones(8 * 2**20))")
    warning = k.value("get_monitor().retained_warning()")
    assert warning is not None and "memory left after cleanup keeps growing" in warning


@pytest.fixture()
def fake_kernel(
    kernel_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Kernel]:
    """A kernel whose pynvml is the fake `request.param` = (FakeNvml, extra env)."""
    fake, extra = request.param
    k = Kernel({**kernel_env, **child_env(fake, tmp_path), **extra})
    loaded = k.run("%load_ext qwen3_jupyter")
    assert loaded.status == "ok", loaded.error
    yield k
    k.shutdown()


FOUR = FakeNvml(
    [
        FakeGpu(used=10 * GiB, processes=[FakeProcess(999_001, 10 * GiB)]),
        FakeGpu(used=20 * GiB),
        FakeGpu(name="NVIDIA A100-SXM4-80GB", used=30 * GiB, processes=[]),
        FakeGpu(used=40 * GiB),
    ]
)


@pytest.mark.parametrize(
    "fake_kernel", [(FOUR, {"CUDA_VISIBLE_DEVICES": "2"})], indirect=True, ids=["gpu2of4"]
)
def test_four_gpus_cuda_visible_devices_2(fake_kernel: Kernel) -> None:
    _, widgets = _show(fake_kernel)
    text = widgets.text()
    # torch calls it cuda:0: the row says both names
    assert ">cuda:0 (GPU 2)</b>" in text and ">GPU 0</b>" not in text and ">GPU 3</b>" not in text
    assert "30.0 GiB / 80.0 GiB" in text
    # the kernel's pid is not in NVML's list (as in containers): unknown, never 0
    assert "this kernel unknown (torch has not used this GPU)" in text
    assert "NVML · driver 550.54.15" in text
    _, every = _show(fake_kernel, "%qwen3_gauge --all")
    labels = [h for h in every.html() if h.startswith("<b ")]
    assert [h.split(">")[1].split("<")[0] for h in labels] == [
        "GPU 0",
        "GPU 1",
        "cuda:0 (GPU 2)",
        "GPU 3",
        "host",
    ]
    assert "not visible to this kernel" in every.text()


ONE = FakeNvml([FakeGpu(used=3 * GiB, utilization=55, processes=[FakeProcess(SELF, GiB)])])


def test_a_gauge_from_python_without_the_extension_resets_its_peak_at_a_cleanup(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    """`qwen3_jupyter.gauge()` with no `%load_ext`: its "peak since the last cleanup" was the
    peak since the gauge started (nothing told its monitor of cleanups)."""
    k = Kernel({**kernel_env, **child_env(ONE, tmp_path)})
    try:
        result = k.run(
            "import sys, time, qwen3_jupyter\n"
            "g = qwen3_jupyter.gauge(interval=0.05)\n"
            "fake = sys.modules['pynvml']._fake\n"
            "fake.gpus[0].used = 30 * 2**30\n"
            "time.sleep(0.3)\n"
            "fake.gpus[0].used = 2**30\n"
            "time.sleep(0.3)\n"
            "qwen3_jupyter.cleanup()\n"
            "time.sleep(0.3)\n"
            "peak = g.monitor.latest().gpus[0].peak_used / 2**30\n"
            "g.close()"
        )
        assert result.status == "ok", result.error
        assert k.value("peak") == 1.0
    finally:
        k.shutdown()


@pytest.mark.parametrize("fake_kernel", [(ONE, {})], indirect=True, ids=["onegpu"])
def test_one_gpu_changes_and_a_driver_error_mid_run(fake_kernel: Kernel) -> None:
    _, widgets = _show(fake_kernel, "%qwen3_gauge --interval 0.1")
    text = widgets.text()
    assert "3.0 GiB / 80.0 GiB · this kernel 1.00 GiB" in text and "util 55%" in text
    busy = fake_kernel.run(
        "import sys, time\n"
        "fake = sys.modules['pynvml']._fake\n"
        "for gib in (20, 40, 60, 79.3):\n"
        "    fake.gpus[0].used = int(gib * 2**30)\n"
        "    time.sleep(0.3)\n"
        "fake.fail()\n"
        "time.sleep(0.4)\n"
    )
    assert busy.status == "ok", busy.error
    updates = widgets.feed(busy.messages)
    values = [str(s.get("value", "")).replace("\xa0", " ") for _, _, s in updates]
    for shown in ("20.0 GiB / 80.0 GiB", "40.0 GiB", "60.0 GiB", "79.3 GiB"):
        assert any(shown in v for v in values), shown
    assert any("only 204.8 MiB free" in v for v in values), [v for v in values if "free" in v]
    styles = [s["bar_style"] for _, _, s in updates if "bar_style" in s]
    assert "danger" in styles
    assert "NVML error: GPU is lost" in widgets.text()
    assert "host" in widgets.text()
    alive = fake_kernel.run(
        "import threading\n"
        "fake.heal(); time.sleep(0.3)\n"
        "print([t.name for t in threading.enumerate() if t.name.startswith('qwen3')])\n"
    )
    assert alive.stdout.strip() == "['qwen3-jupyter-monitor']"
    widgets.feed(alive.messages)
    assert "NVML error" not in widgets.text() and "79.3 GiB / 80.0 GiB" in widgets.text()


@pytest.mark.parametrize("fake_kernel", [(FakeNvml.with_gpus(1), {})], indirect=True, ids=["1"])
def test_load_unload_50_times_leaves_nothing_behind(fake_kernel: Kernel) -> None:
    result = fake_kernel.run(
        "import sys, threading, time, qwen3_jupyter\n"
        "from qwen3_jupyter.session import SESSION\n"
        "ip = get_ipython(); fake = sys.modules['pynvml']._fake\n"
        "ip.run_line_magic('unload_ext', 'qwen3_jupyter')\n"
        "threads, listeners = threading.active_count(), len(SESSION.result_listeners)\n"
        "for i in range(50):\n"
        "    ip.run_line_magic('load_ext', 'qwen3_jupyter')\n"
        "    g = qwen3_jupyter.gauge(interval=0.05)\n"
        "    time.sleep(0.01)\n"
        "    ip.run_line_magic('unload_ext', 'qwen3_jupyter')\n"
        "print(threading.active_count() - threads, len(SESSION.result_listeners) - listeners)\n"
        "print(fake.init_count, fake.shutdown_count, fake.open_handles)\n"
        "print('qwen3_gauge' in ip.magics_manager.magics['line'], g.comm is None)\n"
    )
    assert result.status == "ok", result.error
    said = "[qwen3] extension unloaded: 1 gauge closed (%qwen3_gauge)"  # no model: none stays
    lines = [line for line in result.stdout.split("\n") if line != said]
    assert result.stdout.count(said) == 50, "each unload says it closed the gauge"
    assert lines[0] == "0 0"
    init, shutdown, open_handles = map(int, lines[1].split())
    assert init == shutdown >= 50 and open_handles == 0
    assert lines[2] == "False True"


def test_fake_module_memory_figures_are_consistent() -> None:
    """Guards the numbers the kernel tests above rely on."""
    fake = FakeNvml([FakeGpu(used=int(79.3 * GiB))])
    handle = fake.module.nvmlDeviceGetHandleByIndex  # uninitialised calls fail like NVML's
    with pytest.raises(fake.module.NVMLError_Uninitialized):
        handle(0)
    fake.module.nvmlInit()
    info = fake.module.nvmlDeviceGetMemoryInfo(handle(0), version=fake.module.nvmlMemory_v2)
    assert round(info.free / MiB, 1) == 204.8
    fake.module.nvmlShutdown()


# -- the view alone, in this process (a counting comm stands in for the kernel) ----------------


class CountingComm(comm.DummyComm):
    sent: list[tuple[str, dict[str, Any]]] = []  # noqa: RUF012

    def publish_msg(self, msg_type: str, data: Any = None, *args: Any, **keys: Any) -> None:
        CountingComm.sent.append((self.comm_id, dict(data or {})))


@pytest.fixture()
def counting_comms(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    CountingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", CountingComm)
    return CountingComm.sent


def _updates(sent: list[tuple[str, dict[str, Any]]], ids: set[str]) -> list[dict[str, Any]]:
    return [d["state"] for cid, d in sent if cid in ids and d.get("method") == "update"]


def test_steady_memory_sends_nothing_and_a_change_sends_once(
    counting_comms: list[tuple[str, dict[str, Any]]],
) -> None:
    fake = FakeNvml([FakeGpu(used=5 * GiB, processes=[FakeProcess(SELF, 5 * GiB)])])
    monitor = Monitor(NvmlReader(fake.module), interval=0.05)
    g = Gauge(monitor)
    try:
        _wait_for(lambda: g.updates >= 3)
        row = next(iter(g._rows.values()))
        gpu_ids = {w.comm.comm_id for w in (row.label, row.bar, row.spark, row.text)}
        polls = monitor.polls
        counting_comms.clear()
        _wait_for(lambda: monitor.polls >= polls + 10)
        assert _updates(counting_comms, gpu_ids) == []
        fake.gpus[0].used = 41 * GiB
        fake.gpus[0].processes[0].used = 41 * GiB
        _wait_for(lambda: "41.0 GiB / 80.0 GiB" in row.text.value.replace("\xa0", " "))
        polls = monitor.polls
        _wait_for(lambda: monitor.polls >= polls + 5)
        changed = _updates(counting_comms, gpu_ids)
        texts = [
            u["value"].replace("\xa0", " ") for u in changed if "<span>" in str(u.get("value"))
        ]
        assert len(texts) == 1 and "this kernel 41.0 GiB" in texts[0]
        bars = [u for u in changed if "bar_style" in u or isinstance(u.get("value"), float)]
        assert len(bars) == 1 and bars[0]["value"] == 51.0  # one message for value + colour
    finally:
        g.close()
        monitor.stop()
    assert monitor.subscriber_count == 0 and g.comm is None


def test_closing_the_last_gauge_stops_the_polling_thread(
    counting_comms: list[tuple[str, dict[str, Any]]],
) -> None:
    fake = FakeNvml([FakeGpu(used=GiB)])
    monitor = Monitor(NvmlReader(fake.module), interval=0.05)
    first, second = Gauge(monitor), Gauge(monitor)
    try:
        _wait_for(lambda: first.updates >= 2)
        second.close()
        assert monitor.running, "one gauge is still open"
        first.close()
        assert not monitor.running and monitor.subscriber_count == 0
        polls = monitor.polls
        time.sleep(0.2)
        assert monitor.polls == polls
        fake.gpus[0].used = 10 * GiB  # while nothing polls
        third = Gauge(monitor)  # its first text was the reading from before the stop
        row = next(r for key, r in third._rows.items() if key != "host")
        assert row.text.value.replace("\xa0", " ").startswith("<span>12% · 10.0 GiB / 80.0 GiB")
        _wait_for(lambda: third.updates >= 1)
        third.close()
        assert not monitor.running
    finally:
        monitor.stop()


def test_rows_say_unknown_with_torch_reserved_never_zero() -> None:
    fake = FakeNvml([FakeGpu(used=9 * GiB, processes=[FakeProcess(4321, 9 * GiB)])])
    snap = Monitor(NvmlReader(fake.module)).sample()
    sample = snap.gpus[0]
    torch_dev = TorchDeviceMemory(0, "H100", sample.gpu.uuid, 3 * GiB, 4 * GiB, 5 * GiB, 6 * GiB)
    from dataclasses import replace

    row = gpu_row(replace(sample, torch=torch_dev), 500 * MiB)
    assert "this kernel unknown (torch reserved 4.00 GiB)" in row.text
    assert "torch 3.00 GiB alloc · 4.00 GiB reserved" in row.text
    assert (row.percent, row.style) == (11, "success")
    host = host_row(snap, 500 * MiB)
    assert host.label == "host" and "RSS" in host.text


def test_without_nvml_a_gpu_torch_uses_has_a_row_of_torchs_figures() -> None:
    """A container without libnvidia-ml (CUDA given, NVML not): the footer said "showing host
    and torch memory", and only host memory was shown."""
    from dataclasses import replace

    snap = Monitor(NvmlReader(FakeNvml(init_error=LIBRARY_NOT_FOUND).module)).sample()
    assert not snap.nvml_available
    device = TorchDeviceMemory(0, "NVIDIA H100", None, 30 * GiB, 40 * GiB, 41 * GiB, 50 * GiB)
    views = row_views(replace(snap, torch=(device,)), False, 500 * MiB)
    assert [v.label for v in views] == ["cuda:0", "host"]
    assert views[0].text == (
        "this kernel: torch 40.0 GiB reserved, 30.0 GiB allocated (peak 50.0 GiB) · total "
        "unknown without NVML"
    )
    assert "showing host and torch memory only" in footer_text(snap)


def test_the_sparkline_is_two_minutes_whatever_the_interval() -> None:
    """One point per poll: at --interval 5 the 60 points were five minutes."""
    from qwen3_jupyter.gauge import SPARK_BUCKET_SECONDS, SPARK_POINTS, _Series

    series = _Series()
    start = 1_000_000.0
    for poll in range(60):  # five minutes, a poll every 5 s: 80 % for 3, then 10 % for 2
        series.add(start + 5 * poll, 0.8 if poll < 36 else 0.1)
    assert len(series.values) == SPARK_POINTS
    assert SPARK_POINTS * SPARK_BUCKET_SECONDS == 120
    older = list(series.values).count(0.8)  # 36 of 60 points were older than two minutes
    assert older <= 5 / SPARK_BUCKET_SECONDS, "at most the reading held until the next poll"


def test_formatting_and_sparkline() -> None:
    assert short_bytes(412 * MiB + 3) == "412 MiB"
    assert short_bytes(int(1.234 * GiB)) == "1.23 GiB"
    assert short_bytes(None) == "unknown"
    steady = sparkline_svg([0.5] * 3)
    assert steady == sparkline_svg([0.5] * 40)  # filling up draws the same line
    assert steady == sparkline_svg([0.501] * 3)  # sub-pixel noise draws nothing
    assert steady != sparkline_svg([0.5, 0.5, 0.9])
    assert sparkline_svg([]) == ""


def _wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_server_rows_and_the_kept_line(counting_comms: list[tuple[str, dict[str, Any]]]) -> None:
    """Fake sources stand in for the session: a server with metrics, one without, and the
    fast path's decode cache; the gauge shows a row per server and one 'kept' line."""
    from qwen3_jupyter.engines.server_metrics import ServerLoad
    from qwen3_jupyter.gauge import kept_html, server_row

    loads = [
        ServerLoad("http://gpu-box:8000/v1", "vLLM", 0.93, 7, 2),
        ServerLoad("http://laptop:8000/v1", error="no /metrics (HTTP 404)"),
    ]
    kept = ["decode cache 448 MiB on cuda:0, kept for speed (%qwen3 --eager gives it back)"]
    monitor = Monitor(NvmlReader(FakeNvml([FakeGpu(used=GiB)]).module), interval=0.05)
    monitor.watch_servers(lambda: loads)
    monitor.watch_kept(lambda: kept)
    g = Gauge(monitor)
    try:
        _wait_for(lambda: g.updates >= 1 and len(g._rows) == 4)
        texts = [r.text.value.replace("\xa0", " ") for r in g._rows.values()]
        assert (
            "http://gpu-box:8000/v1 · vLLM · KV cache 93% · 7 running · 2 waiting · "
            "model memory lives on the server"
        ) in texts[2]
        assert "http://laptop:8000/v1 · no /metrics (HTTP 404) · model memory lives" in texts[3]
        assert "kept on purpose: decode cache 448 MiB on cuda:0" in g._kept.value
        assert "kept on purpose" in g.as_html() and "gpu-box" in g.as_html()
        static = g.as_text().replace("\xa0", " ")  # no figure, no "server 0%"
        assert "server · http://laptop:8000/v1 · no /metrics" in static, static
        loads.pop()
        kept.clear()
        _wait_for(lambda: len(g._rows) == 3 and g._kept.value == "")
    finally:
        g.close()
        monitor.stop()
    busy = server_row(ServerLoad("u", "vLLM", 0.93, 1, 0))
    assert (busy.percent, busy.style, busy.label) == (93, "danger", "server")
    assert server_row(ServerLoad("u", error="x")).percent is None  # no "0%": no figure
    quiet = Monitor(NvmlReader(FakeNvml([]).module))
    assert kept_html(quiet.sample()) == ""
    quiet.stop()


# -- what a row says when NVML is partly blind, and how the gauge says it is stale --------------


def test_a_gpu_that_cannot_be_read_keeps_its_row_and_the_footer_does_not_say_no_gpu() -> None:
    fake = FakeNvml([FakeGpu(used=GiB), FakeGpu(used=2 * GiB)])
    monitor = Monitor(NvmlReader(fake.module))
    try:
        fake.gpus[1].lost = True
        snap = monitor.sample()
        rows = row_views(snap, False, 500 * MiB)
        assert [r.label for r in rows] == ["GPU 0", "GPU 1", "host"]
        assert rows[1].text == "could not be read (NVML: GPU is lost)"
        assert rows[1].style == "danger"
        fake.fail()
        blind = monitor.sample()
        assert [r.label for r in row_views(blind, False, 500 * MiB)] == ["host"]
        footer = footer_text(blind)
        assert "could not read the GPUs" in footer and "no NVIDIA GPU found" not in footer
        fake.heal()
        assert [r.label for r in row_views(monitor.sample(), False, 0)] == [
            "GPU 0",
            "GPU 1",
            "host",
        ]
    finally:
        monitor.stop()
    nothing = Monitor(NvmlReader(FakeNvml([]).module))
    assert "no NVIDIA GPU found" in footer_text(nothing.sample())
    nothing.stop()


def test_rows_follow_torchs_numbering_under_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    monitor = Monitor(NvmlReader(FakeNvml([FakeGpu(used=GiB), FakeGpu(used=5 * GiB)]).module))
    try:
        rows = row_views(monitor.sample(), False, 0)
    finally:
        monitor.stop()
    assert [r.label for r in rows] == ["cuda:0 (GPU 1)", "cuda:1 (GPU 0)", "host"]
    assert rows[0].text.startswith("5.0 GiB / 80.0 GiB")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    same = Monitor(NvmlReader(FakeNvml.with_gpus(2).module))
    try:
        assert [r.label for r in row_views(same.sample(), False, 0)][:2] == ["GPU 0", "GPU 1"]
    finally:
        same.stop()


def test_a_gpu_that_cannot_be_read_keeps_its_place_under_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unreadable GPU in CUDA_VISIBLE_DEVICES is still a CUDA device: the GPUs after it stay
    visible, under their own cuda numbers (it used to end the list like an invalid entry, and
    the footer blamed CUDA_VISIBLE_DEVICES for hiding every GPU)."""
    fake = FakeNvml([FakeGpu(used=GiB), FakeGpu(used=5 * GiB), FakeGpu(used=9 * GiB)])
    for value in ("0,2", ",".join(gpu_uuid(i)[:12] for i in (0, 2))):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        monitor = Monitor(NvmlReader(fake.module))
        try:
            fake.gpus[0].lost = True
            snap = monitor.sample()
        finally:
            fake.gpus[0].lost = False
            monitor.stop()
        rows = row_views(snap, False, 0)
        assert [r.label for r in rows] == ["cuda:1 (GPU 2)", "GPU 0", "host"], value
        assert rows[0].text.startswith("9.0 GiB / 80.0 GiB")
        assert rows[1].text == "could not be read (NVML: GPU is lost)"
        assert "no GPU visible" not in footer_text(snap)


def test_mig_slices_get_no_cuda_number_cuda_would_not_give_them() -> None:
    """Without CUDA_VISIBLE_DEVICES or torch's devices, CUDA's numbering over a MIG parent and
    its slices is unknown: the rows keep NVML's names (they read cuda:1, cuda:2, cuda:3 on two
    GPUs)."""
    slices = [FakeGpu(used=GiB // 2), FakeGpu(used=GiB // 2)]
    fake = FakeNvml([FakeGpu(used=GiB, mig=slices), FakeGpu(used=5 * GiB)])
    monitor = Monitor(NvmlReader(fake.module))
    try:
        labels = [r.label for r in row_views(monitor.sample(), False, 0)]
    finally:
        monitor.stop()
    assert not any(label.startswith("cuda:") for label in labels), labels
    assert labels[-2:] == ["GPU 1", "host"]


def test_an_unknown_share_says_why_it_is_unknown() -> None:
    listed = FakeNvml([FakeGpu(used=9 * GiB, processes=[FakeProcess(SELF, None)])])
    monitor = Monitor(NvmlReader(listed.module))
    try:
        (row, _) = row_views(monitor.sample(), False, 0)
    finally:
        monitor.stop()
    assert "this kernel unknown (the driver lists this kernel without a figure)" in row.text


def test_sizes_pick_their_unit_after_rounding() -> None:
    assert short_bytes(int(1023.99 * MiB)) == "1.00 GiB"
    assert short_bytes(int(9.999 * GiB)) == "10.0 GiB"
    assert short_bytes(int(99.96 * MiB)) == "100 MiB"
    assert short_bytes(1023) == "1023 B" and short_bytes(1024) == "1.00 KiB"
    assert device_bytes(int(1023.99 * MiB)) == "1.0 GiB"
    assert device_bytes(80 * GiB) == "80.0 GiB" and device_bytes(412 * MiB) == "412 MiB"


def _snapshot_at_a_beat() -> tuple[Snapshot, float]:
    """A snapshot polled every 0.5 s, and the start of its heartbeat period."""
    monitor = Monitor(NvmlReader(FakeNvml([]).module), interval=0.5)
    try:
        snap = monitor.sample()
    finally:
        monitor.stop()
    return snap, (snap.timestamp // HEARTBEAT_SECONDS) * HEARTBEAT_SECONDS


def test_the_footer_beats_every_two_seconds_and_carries_its_stale_warning() -> None:
    snap, start = _snapshot_at_a_beat()
    at = [footer_html(replace(snap, timestamp=start + t)) for t in (0.1, 1.0, 1.9, 2.1)]
    assert at[0] == at[1] == at[2] != at[3]  # one message per beat while memory is steady
    assert "animation:qwen3-gauge-stale 0s 7s forwards" in at[0]  # 3 beats + 1 s
    assert "not updated since" in at[0] and "NVML" in at[0]
    assert "not updated since" in at[0] and ": a saved copy, or " in at[0]  # a shared copy is
    slow = footer_html(replace(snap, timestamp=start, interval=10.0))
    assert "0s 31s forwards" in slow  # a slow poll is not mistaken for a dead kernel
    healthy = Monitor(NvmlReader(FakeNvml([FakeGpu(used=GiB)]).module))
    try:
        compact = footer_html(healthy.sample(), compact=True)
    finally:
        healthy.stop()
    assert "not updated since" in compact and "NVML" not in compact


@pytest.mark.parametrize(
    "trouble", ["no-driver", "no-gpu", "gpu-lost", "nvml-failing"], ids=lambda t: str(t)
)
def test_a_compact_gauge_and_its_static_copy_say_why_gpu_rows_are_missing(
    trouble: str, counting_comms: list[tuple[str, dict[str, Any]]]
) -> None:
    """A compact gauge drops the footer, and a static copy (what `%qwen3 --gauge` leaves) had
    only rows: with no GPU row, host memory alone read as "no GPU memory used"."""
    fake = FakeNvml(
        [] if trouble == "no-gpu" else [FakeGpu(used=GiB)],
        init_error=DRIVER_NOT_LOADED if trouble == "no-driver" else None,
    )
    monitor = Monitor(NvmlReader(fake.module), interval=0.05)
    if trouble == "gpu-lost":
        fake.gpus[0].lost = True
    g = Gauge(monitor, compact=True)
    try:
        if trouble == "nvml-failing":
            _wait_for(lambda: g.updates >= 1)
            fake.fail()
            _wait_for(lambda: list(g._rows) == ["host"])
        _wait_for(lambda: g.updates >= 2)
        footer, copy = g._footer.value, g.as_html()
    finally:
        g.close()
        monitor.stop()
    said = {
        "no-driver": "driver is not loaded",
        "no-gpu": "no NVIDIA GPU found",
        "gpu-lost": "GPU is lost",
        "nvml-failing": "could not read the GPUs",
    }[trouble]
    assert said in footer and said in copy, (footer, copy)


def test_a_new_gauge_shows_a_reading_at_once(
    counting_comms: list[tuple[str, dict[str, Any]]],
) -> None:
    monitor = Monitor(NvmlReader(FakeNvml([FakeGpu(used=GiB)]).module), interval=0.5)
    g = Gauge(monitor)
    try:
        assert g.updates >= 1 and "reading memory" not in g._footer.value
    finally:
        g.close()
        monitor.stop()


def test_a_closed_gauge_leaves_no_widget_open(
    counting_comms: list[tuple[str, dict[str, Any]]],
) -> None:
    """Each widget makes its own Layout and Style, each with a comm: a closed gauge (one per
    `%qwen3 --gauge` call) left 17 of them open in the kernel and in the browser."""
    from ipywidgets.widgets.widget import _instances

    monitor = Monitor(NvmlReader(FakeNvml([FakeGpu(used=GiB)]).module), interval=0.05)
    before = set(_instances)
    try:
        for _ in range(3):
            g = Gauge(monitor, compact=True)
            _wait_for(lambda g=g: g.updates >= 1)  # type: ignore[misc]
            g.close()
    finally:
        monitor.stop()
    assert set(_instances) - before == set(), [type(w).__name__ for w in _instances.values()]


def test_stale_readings_dim_the_whole_gauge_not_only_its_footer() -> None:
    """The readings persist between beats, so the footer's rule for them switches between two
    animation names at each beat (a new name restarts the delay)."""
    snap, start = _snapshot_at_a_beat()
    one, two = (
        footer_html(replace(snap, timestamp=start + t), scope="qwen3-gauge-7") for t in (0, 2.1)
    )
    rule = ".qwen3-gauge-7 .qwen3-gauge-readings{animation:qwen3-gauge-dim-%d 0s 7s forwards}"
    beat = int(start // HEARTBEAT_SECONDS)
    assert rule % (beat % 2) in one and rule % ((beat + 1) % 2) in two


def test_row_text_breaks_only_between_its_parts_and_a_static_copy_says_when(
    counting_comms: list[tuple[str, dict[str, Any]]],
) -> None:
    assert unbroken("20.0 GiB / 80.0 GiB · GPU peak 20.0 GiB") == (
        "20.0\xa0GiB\xa0/\xa080.0\xa0GiB · GPU\xa0peak\xa020.0\xa0GiB"
    )
    fake = FakeNvml([FakeGpu(used=GiB), FakeGpu(used=GiB)])
    monitor = Monitor(NvmlReader(fake.module), interval=0.05)
    g = Gauge(monitor)
    try:
        fake.gpus[1].lost = True
        _wait_for(lambda: any(key.startswith("unread:") for key in g._rows))
        assert not any(key.startswith("unread:") for key in g._series), "no sparkline at 0"
        copy = g.as_html()
    finally:
        g.close()
        monitor.stop()
    assert "memory as read at " in copy and "could\xa0not\xa0be\xa0read" in copy


def test_this_kernels_rss_counts_its_child_processes(settled_children: None) -> None:
    """Measured as the change one child holding 64 MiB makes: this process has other children
    (the suite's kernels), which alone would add more than that."""
    size = 64 * MiB
    before = _host_with_children().process_rss
    with _child_holding(size):
        after = _host_with_children().process_rss
    assert after - before >= size // 2, (before, after)


def test_a_forked_child_adds_its_own_pages_not_the_kernels_again(settled_children: None) -> None:
    """A DataLoader worker is a fork: its RSS counts the kernel's pages again. Measured as the
    change the fork makes (this process may have other children: the suite's kernels)."""
    import os
    import signal

    import psutil

    held = b"x" * (128 * MiB)  # pages the fork shares with this process
    before = _host_with_children().process_rss
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        after = _host_with_children().process_rss
        child_rss = psutil.Process(pid).memory_info().rss
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert child_rss > 128 * MiB, "control: the fork's RSS counts the shared pages"
    assert after - before < 64 * MiB, (before, after)
    del held


def _host_with_children() -> Any:
    """One sample's host memory, the kernel's children looked up afresh."""
    monitor = Monitor(NvmlReader(FakeNvml([]).module))
    try:
        monitor._children_at = -1e9
        return monitor.sample().host
    finally:
        monitor.stop()


@pytest.fixture()
def settled_children(kernel_pool: KernelPool) -> None:
    """The suite's other children settled: the spare kernel done with its imports (its memory
    no longer grows) and the background mypy ended (its memory no longer vanishes) while a
    test measures this process's children."""
    kernel_pool.settle()
    if background_check.MYPY is not None:
        background_check.MYPY.wait()


@contextlib.contextmanager
def _child_holding(size: int) -> Iterator[None]:
    """A child process holding `size` bytes, as a DataLoader worker would."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys; b = b'x' * {size}; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        import psutil

        while psutil.Process(child.pid).memory_info().rss < size:
            assert time.monotonic() < deadline, "the child never grew"
            time.sleep(0.05)
        yield
    finally:
        child.kill()
        child.wait()


def test_a_row_keeps_torchs_number_when_another_gpu_cannot_be_read() -> None:
    """cuda:0 lost (NVML cannot read it): the GPU torch calls cuda:1 is still cuda:1."""
    from qwen3_jupyter.monitor import Monitor as _Monitor
    from qwen3_jupyter.nvml import GpuReading, NvmlReading

    gpu1 = GpuReading(1, "GPU-bbbb", "H100", 5 * GiB, 80 * GiB, 0, (), "v2")
    reading = NvmlReading(True, "NVML error: GPU 0: GPU is lost", "550", (gpu1,), time.time())
    devices = (
        TorchDeviceMemory(0, "H100", "GPU-aaaa", 0, 0, 0, 0),
        TorchDeviceMemory(1, "H100", "GPU-bbbb", 4 * GiB, 4 * GiB, 0, 0),
    )
    monitor = _Monitor(NvmlReader(FakeNvml([]).module))
    (sample,) = monitor._gpu_samples(reading, devices)
    assert sample.cuda_index == 1 and gpu_label(sample) == "GPU 1"


@pytest.mark.parametrize(
    ("processes", "used", "said", "total"),
    [
        ("here", 5 * GiB, "this kernel 0 B", 0),
        ("elsewhere", 5 * GiB, "this kernel unknown (torch has not used this GPU)", None),
        ("none", 30 * GiB, "this kernel unknown (torch has not used this GPU)", None),
        ("none", 100 * MiB, "this kernel 0 B", 0),
    ],
    ids=["other-local-process", "host-pids", "hidden-processes", "idle-gpu"],
)
def test_the_gauge_and_the_sidebar_judge_a_kernel_nvml_leaves_out_alike(
    processes: str, used: int, said: str, total: int | None
) -> None:
    """0 B where NVML's list is whole and of this PID namespace (another local process is on
    it, or nothing is and the GPU is idle); unknown where it lists PIDs that do not exist here
    (a container) or lists nobody on a busy GPU. Before, the gauge said "unknown (torch has not
    used this GPU)" for a kernel the sidebar showed at 0 B."""
    pid = {"here": os.getppid(), "elsewhere": 999_001}.get(processes)
    assert pid is None or psutil.pid_exists(pid) == (processes == "here")
    listed = [] if pid is None else [FakeProcess(pid, used)]
    reader = NvmlReader(FakeNvml([FakeGpu(used=used, processes=listed)]).module)
    row = gpu_row(Monitor(reader).sample().gpus[0], 500 * MiB)
    assert said in row.text, row.text
    reading = reader.read()
    trees = process_trees([WatchedKernel(os.getpid())])
    assert attribute(reading, trees, existing_pids(reading)).totals[os.getpid()] == total


def test_a_rows_level_is_said_in_words_not_only_by_its_bars_colour() -> None:
    """The percentage and the warning/danger level were only the bar's fill and colour: a
    screen reader, a colour-blind user or a text copy had neither."""
    from qwen3_jupyter.gauge import RowView, row_text

    def view(percent: int | None, style: str) -> RowView:
        return RowView("k", "GPU 0", "", percent, style, "62.0 GiB / 80.0 GiB", 0.78)

    assert row_text(view(40, "success")) == "40% · 62.0 GiB / 80.0 GiB"
    assert row_text(view(78, "warning")) == "78% (high) · 62.0 GiB / 80.0 GiB"
    assert row_text(view(97, "danger")) == "97% (nearly full) · 62.0 GiB / 80.0 GiB"
    assert row_text(view(None, "danger")) == "62.0 GiB / 80.0 GiB", "no figure: no percentage"


def test_a_live_gauges_stale_warning_is_hidden_from_screen_readers_too() -> None:
    """The warning was only transparent (opacity 0) until it was due: a screen reader read
    "not updated since …" on every live gauge. `visibility:hidden` hides it from them, and
    the animation that shows it makes it visible."""
    from qwen3_jupyter.gauge import footer_html

    footer = footer_html(_snapshot_at_a_beat()[0])
    stale = footer.split('class="qwen3-gauge-stale" style="', 1)[1].split('"', 1)[0]
    assert "visibility:hidden" in stale and "opacity:0" in stale
    assert "@keyframes qwen3-gauge-stale{to{max-height:6em;opacity:1;visibility:visible}}" in footer
