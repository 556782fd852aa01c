"""The metrics endpoint on a real Jupyter server with real kernels; NVML is the fake pynvml.

One server (in this process, so the fake's process lists can name the kernels' real PIDs) runs
two kernels: `gpu.ipynb` loaded the extension and started a child process (a DataLoader-like
worker), `plain.ipynb` did neither. Each test installs the fake it needs; the sampler is
restarted so it imports that fake.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.nvml import NvmlReader, existing_pids
from qwen3_jupyter.server.kernels import attribute
from qwen3_jupyter.server.sampler import Sampler, WatchedKernel, process_trees, stale_after
from tests.fake_nvml import (
    LIBRARY_NOT_FOUND,
    NO_PERMISSION,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    GiB,
    MiB,
)
from tests.server_fixture import InProcessServer, http, run_cell

FOREIGN_PID = 4_000_000  # above Linux's pid_max: never a process of this machine

GPU_KEYS = {"key", "index", "uuid", "name", "memory_used", "memory_total", "utilization",
            "mig_parent", "memory_source"}  # fmt: skip
KERNEL_KEYS = {"kernel_id", "name", "notebook_path", "console_name", "pid", "rss", "gpu_memory",
               "gpu_memory_total", "extension_loaded", "execution_state"}  # fmt: skip
TOP_KEYS = {"available", "reason", "timestamp", "driver_version", "gpus", "host", "kernels",
            "other_processes", "history", "notes", "sample_interval", "stale",
            "sample_age_s", "unread_gpus"}  # fmt: skip


@dataclass
class Lab:
    server: InProcessServer
    gpu_kernel: str
    plain_kernel: str
    gpu_pid: int
    plain_pid: int
    child_pid: int

    def use(self, fake: FakeNvml) -> FakeNvml:
        """Make `fake` the server's NVML from the next request on."""
        self.server.sampler.stop()
        fake.install()
        return fake

    def row(self, metrics: dict[str, Any], kernel_id: str) -> dict[str, Any]:
        return next(k for k in metrics["kernels"] if k["kernel_id"] == kernel_id)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    previous = sys.modules.get("pynvml")
    FakeNvml([FakeGpu()]).install()
    root = tmp_path_factory.mktemp("server-root")
    server = InProcessServer(root, base_url="/user/alice/").start()
    clients = []
    child_pid = 0
    try:
        gpu_kernel = server.new_session("work/gpu.ipynb")
        plain_kernel = server.new_session("plain.ipynb")
        gpu_client = server.kernel_client(gpu_kernel)
        clients = [gpu_client, server.kernel_client(plain_kernel)]
        reply = run_cell(
            gpu_client,
            "%load_ext qwen3_jupyter\n"
            "import subprocess, sys\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print(worker.pid)",
        )
        assert reply["status"] == "ok", reply
        child_pid = int(reply["stdout"].split()[-1])
        assert run_cell(clients[1], "x = 1")["status"] == "ok"
        yield Lab(
            server,
            gpu_kernel,
            plain_kernel,
            server.kernel_pid(gpu_kernel),
            server.kernel_pid(plain_kernel),
            child_pid,
        )
    finally:
        for client in clients:
            client.stop_channels()
        if child_pid:
            with contextlib.suppress(OSError):
                os.kill(child_pid, signal.SIGKILL)
        server.stop()
        if previous is None:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = previous


def test_unauthenticated_requests_get_403_and_no_data(lab: Lab) -> None:
    url = lab.server.url("qwen3-jupyter", "metrics")
    for token in (None, "not-the-token"):
        response = http(url, token)
        assert response.status == 403
        assert b"kernels" not in response.body and b"gpus" not in response.body
    assert lab.server.get("qwen3-jupyter", "metrics").status == 200


def test_lives_under_base_url(lab: Lab) -> None:
    assert lab.server.base.endswith("/user/alice/")
    outside = f"http://127.0.0.1:{lab.server.port}/qwen3-jupyter/metrics"
    assert http(outside, lab.server.token).status == 404


def test_no_gpu_answers_the_same_schema_with_a_reason(lab: Lab) -> None:
    lab.use(FakeNvml(init_error=LIBRARY_NOT_FOUND))
    metrics = lab.server.metrics()
    assert set(metrics) == TOP_KEYS
    assert metrics["available"] is False
    assert metrics["gpus"] == []
    assert metrics["reason"].endswith("libnvidia-ml not found)")  # no "torch memory" shown
    assert metrics["host"]["total"] > metrics["host"]["used"] > 0
    assert metrics["other_processes"] == {"gpu_memory": {}}
    rows = {k["kernel_id"]: k for k in metrics["kernels"]}
    assert set(rows) == {lab.gpu_kernel, lab.plain_kernel}
    for row in rows.values():
        assert set(row) == KERNEL_KEYS
        assert row["gpu_memory"] == {} and row["gpu_memory_total"] is None
        assert row["rss"] > 10 * MiB


def test_one_gpu_maps_kernels_and_children_by_pid(lab: Lab) -> None:
    fake = lab.use(FakeNvml([FakeGpu(used=9 * GiB, utilization=37)]))
    fake.gpus[0].processes = [
        FakeProcess(lab.gpu_pid, 3 * GiB),
        FakeProcess(lab.child_pid, 1 * GiB),
        FakeProcess(FOREIGN_PID, 4 * GiB),
    ]
    metrics = lab.server.metrics()
    assert set(metrics) == TOP_KEYS
    assert metrics["available"] is True and metrics["reason"] is None
    (gpu,) = metrics["gpus"]
    assert set(gpu) == GPU_KEYS
    assert (gpu["key"], gpu["memory_used"], gpu["memory_total"]) == ("0", 9 * GiB, 80 * GiB)
    assert (gpu["utilization"], gpu["mig_parent"], gpu["memory_source"]) == (37, None, "v2")

    with_ext = lab.row(metrics, lab.gpu_kernel)
    assert set(with_ext) == KERNEL_KEYS
    assert with_ext["notebook_path"] == "work/gpu.ipynb"
    assert with_ext["pid"] == lab.gpu_pid
    assert with_ext["gpu_memory"] == {"0": 4 * GiB}  # the kernel and its worker
    assert with_ext["gpu_memory_total"] == 4 * GiB
    assert with_ext["extension_loaded"] is True
    assert with_ext["execution_state"] == "idle"
    assert with_ext["rss"] > 10 * MiB

    plain = lab.row(metrics, lab.plain_kernel)
    assert plain["notebook_path"] == "plain.ipynb"
    assert plain["gpu_memory"] == {"0": 0} and plain["gpu_memory_total"] == 0
    assert plain["extension_loaded"] is False

    assert metrics["other_processes"] == {"gpu_memory": {"0": 4 * GiB}}
    assert metrics["notes"] == []
    assert metrics["history"]["gpu_memory_used"]["0"][-1] == 9 * GiB
    assert len(metrics["history"]["timestamps"]) == len(metrics["history"]["host_used"])
    body = lab.server.get("qwen3-jupyter", "metrics").body.decode()
    assert "cmdline" not in body and "environ" not in body and "sleep" not in body


def test_four_gpus_with_unknown_process_memory(lab: Lab) -> None:
    fake = lab.use(FakeNvml([FakeGpu(used=(i + 1) * GiB) for i in range(4)]))
    fake.gpus[0].processes = [FakeProcess(lab.gpu_pid, 1 * GiB)]
    fake.gpus[1].processes = [FakeProcess(FOREIGN_PID, 2 * GiB)]
    fake.gpus[2].processes = [FakeProcess(lab.child_pid, 3 * GiB)]
    fake.gpus[3].processes = [FakeProcess(lab.plain_pid, None)]  # NVML: "not available"
    metrics = lab.server.metrics()
    assert [g["key"] for g in metrics["gpus"]] == ["0", "1", "2", "3"]
    assert len({g["uuid"] for g in metrics["gpus"]}) == 4
    with_ext = lab.row(metrics, lab.gpu_kernel)
    assert with_ext["gpu_memory"] == {"0": 1 * GiB, "1": 0, "2": 3 * GiB, "3": 0}
    assert with_ext["gpu_memory_total"] == 4 * GiB
    plain = lab.row(metrics, lab.plain_kernel)
    assert plain["gpu_memory"] == {"0": 0, "1": 0, "2": 0, "3": None}
    assert plain["gpu_memory_total"] is None  # unknown, never a partial sum or 0
    assert metrics["other_processes"]["gpu_memory"] == {"0": 0, "1": 2 * GiB, "2": 0, "3": 0}


def test_host_pids_from_a_container_make_kernel_vram_unknown(lab: Lab) -> None:
    fake = lab.use(FakeNvml([FakeGpu(used=5 * GiB)]))
    fake.gpus[0].processes = [FakeProcess(FOREIGN_PID, 5 * GiB)]
    metrics = lab.server.metrics()
    for row in metrics["kernels"]:
        assert row["gpu_memory"] == {"0": None} and row["gpu_memory_total"] is None
    assert metrics["other_processes"]["gpu_memory"] == {"0": None}
    assert any("container" in note for note in metrics["notes"])


def test_nvml_failing_to_count_gpus_makes_kernel_vram_unknown_not_zero(lab: Lab) -> None:
    """A reading that could not list its GPUs (driver reset) is not a reading of zero GPUs."""
    fake = lab.use(FakeNvml([FakeGpu(used=9 * GiB)]))
    fake.gpus[0].processes = [FakeProcess(lab.gpu_pid, 3 * GiB)]
    assert lab.row(lab.server.metrics(), lab.gpu_kernel)["gpu_memory_total"] == 3 * GiB
    fake.fail()
    metrics = lab.server.wait_for(lambda m: m["reason"] is not None)
    assert metrics["gpus"] == [] and "GPU is lost" in metrics["reason"]
    for row in metrics["kernels"]:
        assert row["gpu_memory_total"] is None, row
    fake.heal()
    metrics = lab.server.wait_for(lambda m: m["reason"] is None)
    assert lab.row(metrics, lab.gpu_kernel)["gpu_memory_total"] == 3 * GiB


def test_a_lost_gpu_makes_kernel_totals_unknown_not_partial(lab: Lab) -> None:
    fake = lab.use(FakeNvml([FakeGpu(used=2 * GiB), FakeGpu(used=10 * GiB)]))
    fake.gpus[0].processes = [FakeProcess(lab.gpu_pid, 2 * GiB)]
    fake.gpus[1].processes = [FakeProcess(lab.gpu_pid, 10 * GiB)]
    assert lab.row(lab.server.metrics(), lab.gpu_kernel)["gpu_memory_total"] == 12 * GiB
    fake.gpus[1].lost = True
    metrics = lab.server.wait_for(lambda m: m["reason"] is not None)
    assert [g["key"] for g in metrics["gpus"]] == ["0"] and "GPU 1" in metrics["reason"]
    row = lab.row(metrics, lab.gpu_kernel)
    assert row["gpu_memory"] == {"0": 2 * GiB}
    assert row["gpu_memory_total"] is None, "GPU 1 is unknown: no partial sum"
    assert lab.row(metrics, lab.plain_kernel)["gpu_memory_total"] is None
    fake.heal()
    metrics = lab.server.wait_for(lambda m: m["reason"] is None)
    assert lab.row(metrics, lab.gpu_kernel)["gpu_memory_total"] == 12 * GiB


def test_a_lost_gpu_stays_in_the_payload_as_unread_not_gone(lab: Lab) -> None:
    """A GPU lost mid-session is listed in `unread_gpus` with NVML's message, so the sidebar
    can say so instead of "no GPU"; it leaves the list once it answers again."""
    fake = lab.use(FakeNvml([FakeGpu(used=2 * GiB), FakeGpu(used=10 * GiB)]))
    assert lab.server.metrics()["unread_gpus"] == []
    fake.gpus[1].lost = True
    metrics = lab.server.wait_for(lambda m: m["reason"] is not None)
    assert [g["key"] for g in metrics["gpus"]] == ["0"]
    assert metrics["unread_gpus"] == [
        {"key": "1", "index": 1, "error": "GPU is lost", "lost": True}
    ]
    fake.heal()
    metrics = lab.server.wait_for(lambda m: m["reason"] is None)
    assert metrics["unread_gpus"] == []


def test_the_only_gpu_lost_is_unread_not_no_gpu(lab: Lab) -> None:
    fake = lab.use(FakeNvml([FakeGpu(used=2 * GiB)]))
    lab.server.metrics()
    fake.gpus[0].lost = True
    metrics = lab.server.wait_for(lambda m: m["reason"] is not None)
    assert metrics["available"] is True and metrics["gpus"] == []
    assert metrics["unread_gpus"] == [
        {"key": "0", "index": 0, "error": "GPU is lost", "lost": True}
    ]
    fake.fail()  # now NVML cannot even count the GPUs: those seen before are the unread ones
    metrics = lab.server.wait_for(lambda m: "GPU 0:" not in (m["reason"] or ""))
    assert [(g["key"], g["lost"]) for g in metrics["unread_gpus"]] == [("0", True)]
    fake.heal()
    assert lab.server.wait_for(lambda m: m["reason"] is None)["unread_gpus"] == []


def test_a_gpu_unread_for_a_while_is_a_gap_in_its_history_not_zero(lab: Lab) -> None:
    """A GPU NVML could not read (lost, then back) has no figure at those points: null in
    the history, so the sparkline breaks instead of dropping to 0 as if memory were freed."""
    fake = lab.use(FakeNvml([FakeGpu(used=20 * GiB), FakeGpu(used=30 * GiB)]))
    lab.server.metrics()
    fake.gpus[1].lost = True
    lab.server.wait_for(lambda m: m["reason"] is not None)
    fake.heal()
    metrics = lab.server.wait_for(lambda m: m["reason"] is None)
    history = metrics["history"]["gpu_memory_used"]
    assert set(history) == {"0", "1"}
    assert len(history["1"]) == len(history["0"]) == len(metrics["history"]["timestamps"])
    assert None in history["1"], history["1"]
    assert set(history["1"]) == {30 * GiB, None}, "never 0 for a GPU that was not read"
    assert set(history["0"]) == {20 * GiB}
    assert history["1"][-1] == 30 * GiB


def test_a_kernel_listed_without_its_memory_gets_a_note_saying_why(lab: Lab) -> None:
    """NVML lists the kernel's process but no usedGpuMemory (containers, some drivers): the
    kernel's VRAM is unknown, and a note says why."""
    fake = lab.use(FakeNvml([FakeGpu(used=5 * GiB)]))
    fake.gpus[0].processes = [FakeProcess(lab.gpu_pid, None)]
    metrics = lab.server.metrics()
    row = lab.row(metrics, lab.gpu_kernel)
    assert row["gpu_memory"] == {"0": None} and row["gpu_memory_total"] is None
    assert any(
        note.startswith("GPU 0: the driver does not report per-process memory here")
        for note in metrics["notes"]
    ), metrics["notes"]
    fake.gpus[0].processes = [FakeProcess(lab.gpu_pid, 1 * GiB)]
    metrics = lab.server.wait_for(lambda m: lab.row(m, lab.gpu_kernel)["gpu_memory_total"])
    assert metrics["notes"] == []


def test_a_sigkilled_kernel_is_dead_with_unknown_rss_not_idle_with_zero(lab: Lab) -> None:
    """Until the restarter replaces it, a SIGKILLed kernel is a zombie: RSS unknown, "dead"."""
    import psutil

    lab.use(FakeNvml([FakeGpu(used=GiB)]))
    kernel_id = lab.server.new_session("killed.ipynb")
    pid = lab.server.kernel_pid(kernel_id)
    assert lab.row(lab.server.metrics(), kernel_id)["rss"]
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    while not gone():
        time.sleep(0.01)
    killed_at = time.time()
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = lab.server.metrics()
        row = lab.row(metrics, kernel_id)
        if row["pid"] != pid:
            break  # the restarter replaced it
        if metrics["history"]["timestamps"][-1] > killed_at:  # a sample taken after the kill
            seen.append((row["rss"], row["execution_state"], row["extension_loaded"]))
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        http(lab.server.url("api", "kernels", kernel_id), lab.server.token, "DELETE")
    assert seen, "never saw the killed kernel's row"
    assert all(r == (None, "dead", False) for r in seen), seen


def test_a_hung_nvml_serves_the_last_sample_at_once_marked_stale(lab: Lab) -> None:
    """A driver reset can block NVML for minutes: answer at once with the last reading, saying
    how old it is, instead of a 5 s wait per request for an ever older 200 OK."""
    fake = lab.use(FakeNvml([FakeGpu(used=GiB)]))
    stale = stale_after(lab.server.sample_interval)
    metrics = lab.server.metrics()
    assert metrics["stale"] is False and 0 <= metrics["sample_age_s"] <= stale
    fake.reads_open.clear()
    try:
        time.sleep(stale + 0.3)
        bodies = []
        for _ in range(3):
            start = time.monotonic()
            response = lab.server.get("qwen3-jupyter", "metrics")
            assert response.status == 200 and time.monotonic() - start < 1.0
            bodies.append(response.json())
        assert all(b["stale"] is True and b["sample_age_s"] > stale for b in bodies)
        assert len({b["timestamp"] for b in bodies}) == 1, "the last sample, served again"
        ages = [b["sample_age_s"] for b in bodies]
        assert ages == sorted(ages)
    finally:
        fake.reads_open.set()
    metrics = lab.server.wait_for(lambda m: not m["stale"])
    assert metrics["sample_age_s"] <= stale


def test_a_hung_nvml_before_any_sample_answers_503_at_once(lab: Lab) -> None:
    fake = lab.use(FakeNvml([FakeGpu()]))
    fake.reads_open.clear()
    try:
        lab.server.sampler.request([])  # the sampler starts and blocks in NVML
        time.sleep(stale_after(lab.server.sample_interval) + 0.3)
        for _ in range(2):
            start = time.monotonic()
            response = lab.server.get("qwen3-jupyter", "metrics")
            assert response.status == 503 and time.monotonic() - start < 1.0
            assert b"NVML has not answered" in response.body
    finally:
        fake.reads_open.set()
    deadline = time.monotonic() + 10
    while lab.server.get("qwen3-jupyter", "metrics").status != 200:  # 503 until NVML answers
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert lab.server.metrics()["stale"] is False


def test_ten_clients_cost_the_nvml_calls_of_one(lab: Lab) -> None:
    fake = lab.use(FakeNvml([FakeGpu(used=GiB)]))
    threads: set[str] = set()
    count = fake.module.nvmlDeviceGetCount

    def spy() -> int:
        threads.add(threading.current_thread().name)
        return int(count())

    fake.module.nvmlDeviceGetCount = spy  # type: ignore[attr-defined]
    lab.server.metrics()  # starts the sampler

    def poll(seconds: float) -> int:
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            assert lab.server.get("qwen3-jupyter", "metrics").status == 200
            n += 1
            time.sleep(0.05)
        return n

    window = 2.0
    before = fake.reads
    one_requests = poll(window)
    one = fake.reads - before
    before = fake.reads
    with ThreadPoolExecutor(10) as pool:
        ten_requests = sum(pool.map(poll, [window] * 10))
    ten = fake.reads - before
    assert ten_requests > 5 * one_requests / 2  # the ten clients really polled
    expected = window / lab.server.sample_interval
    assert one <= expected + 2 and ten <= expected + 2, (one, ten)
    assert threads == {"qwen3-jupyter-sampler"}  # never on Tornado's event loop


def test_unloading_the_extension_clears_the_flag(lab: Lab) -> None:
    lab.use(FakeNvml([FakeGpu()]))
    client = lab.server.kernel_client(lab.gpu_kernel)
    try:
        assert run_cell(client, "%unload_ext qwen3_jupyter")["status"] == "ok"
        lab.server.wait_for(lambda m: not lab.row(m, lab.gpu_kernel)["extension_loaded"])
        assert run_cell(client, "%load_ext qwen3_jupyter")["status"] == "ok"
        lab.server.wait_for(lambda m: lab.row(m, lab.gpu_kernel)["extension_loaded"])
    finally:
        client.stop_channels()


def test_new_and_removed_kernels_appear_and_go(lab: Lab) -> None:
    lab.use(FakeNvml([FakeGpu()]))
    kernel_id = lab.server.new_session("scratch.ipynb")
    metrics = lab.server.metrics()
    row = lab.row(metrics, kernel_id)
    assert row["notebook_path"] == "scratch.ipynb" and row["rss"] is not None
    assert (
        http(lab.server.url("api", "kernels", kernel_id), lab.server.token, "DELETE").status == 204
    )
    metrics = lab.server.metrics()
    assert kernel_id not in {k["kernel_id"] for k in metrics["kernels"]}


def new_console(lab: Lab, name: str, kernel: dict[str, str], path: str) -> str:
    """Start a console session as JupyterLab does ("New Console for Notebook" passes the
    notebook's kernel id; a console of its own, a kernel name); returns its kernel id."""
    response = http(
        lab.server.url("api", "sessions"),
        lab.server.token,
        "POST",
        {"path": path, "type": "console", "name": name, "kernel": kernel},
    )
    assert response.status == 201, response.body
    return str(response.json()["kernel"]["id"])


def test_a_console_on_a_notebooks_kernel_leaves_the_row_the_notebooks(lab: Lab) -> None:
    """A kernel with a notebook's session and a console's showed whichever session was listed
    last: the console's internal path ("train/console-1-<uuid>"), a file that does not exist.
    A kernel only a console uses is named after the console, with no path to open."""
    lab.use(FakeNvml([FakeGpu()]))
    shared = lab.server.new_session("train/llama.ipynb")
    console_path = "train/console-1-5c1d2e3f-aaaa-bbbb-cccc-1234567890ab"
    assert new_console(lab, "Console 1", {"id": shared}, console_path) == shared
    # A console first, then a notebook given its kernel: the notebook still wins.
    alone = new_console(lab, "Console 2", {"name": "python3"}, "console-2-0000")
    adopted = new_console(lab, "Console 3", {"name": "python3"}, "console-3-0000")
    response = http(
        lab.server.url("api", "sessions"),
        lab.server.token,
        "POST",
        {"path": "adopted.ipynb", "type": "notebook", "name": "", "kernel": {"id": adopted}},
    )
    assert response.status == 201, response.body
    try:
        kinds = {(s["type"], s["kernel"]["id"]) for s in lab.server.get("api", "sessions").json()}
        assert {("notebook", shared), ("console", shared), ("console", alone)} <= kinds
        metrics = lab.server.metrics()
        rows = {k: lab.row(metrics, k) for k in (shared, alone, adopted)}
        paths = [r["notebook_path"] for r in rows.values()]
        assert paths == ["train/llama.ipynb", None, "adopted.ipynb"]
        assert [r["console_name"] for r in rows.values()] == [None, "Console 2", None]
        assert lab.row(metrics, lab.plain_kernel)["console_name"] is None
    finally:
        for kernel_id in (shared, alone, adopted):
            http(lab.server.url("api", "kernels", kernel_id), lab.server.token, "DELETE")


def test_a_client_polling_slower_than_the_idle_timeout_keeps_a_running_sampler(lab: Lab) -> None:
    """The sidebar may poll every 10 minutes; the sampler stopped after its idle timeout (60 s)
    without a request, so each slow poll found it stopped, restarted it (history dropped: an
    empty sparkline) and left it to sample, unwatched, until it idled out again. A client that
    says its interval (`?interval=` seconds) keeps it running for three of them, no longer."""
    lab.use(FakeNvml([FakeGpu(used=GiB)]))
    sampler = lab.server.sampler
    sampler.idle_timeout = 0.5
    url = lab.server.url("qwen3-jupyter", "metrics")
    try:
        lengths = []
        for _ in range(3):
            response = http(url + "?interval=1", lab.server.token)
            assert response.status == 200, response.body
            lengths.append(len(response.json()["history"]["timestamps"]))
            time.sleep(1.5)  # three idle timeouts: the poll of a client polling every ~1 s
            assert sampler.running
        assert lengths[-1] >= lengths[0] + 8, lengths  # ~15 readings in 3 s; a restart: 1
        deadline = time.monotonic() + 5  # 3 intervals after the last poll, it stops
        while sampler.running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not sampler.running
        # Without the parameter (or with nonsense), the idle timeout alone, as before.
        for query in ("", "?interval=abc", "?interval=-4", "?interval=inf"):
            assert http(url + query, lab.server.token).status == 200
        time.sleep(1.2)
        assert not sampler.running
        # A client cannot keep the sampler past three times the longest interval it may set.
        sampler.request([], client_interval=1e9)
        assert sampler._keep_until - time.monotonic() <= 3 * 600
    finally:
        sampler.idle_timeout = 60.0
        sampler.stop()


# -- the sampler and the attribution alone ----------------------------------------------------


def test_sampler_stops_polling_and_closes_nvml_when_nobody_asks() -> None:
    fake = FakeNvml([FakeGpu()])
    sampler = Sampler(
        interval=0.05, idle_timeout=0.3, reader_factory=lambda: NvmlReader(fake.module)
    )
    sampler.request([WatchedKernel(os.getpid())])
    deadline = time.monotonic() + 5
    while sampler.latest is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sampler.latest is not None and os.getpid() in sampler.latest.trees
    assert fake.open_handles == 1
    time.sleep(0.8)
    assert not sampler.running
    assert fake.open_handles == 0
    reads = fake.reads
    time.sleep(0.3)
    assert fake.reads == reads
    sampler.request([])
    time.sleep(0.2)
    assert sampler.running and fake.reads > reads
    sampler.stop()
    assert fake.open_handles == 0


@pytest.mark.parametrize("idle_timeout", [0.0, -1.0, float("nan")])
def test_an_idle_timeout_of_zero_still_samples_for_the_request(idle_timeout: float) -> None:
    """`c.Qwen3JupyterMetrics.idle_timeout = 0` stopped the thread before its first sample:
    every request without `?interval=` waited 5 s and got a 503."""
    fake = FakeNvml([FakeGpu()])
    sampler = Sampler(
        interval=0.05, idle_timeout=idle_timeout, reader_factory=lambda: NvmlReader(fake.module)
    )
    try:
        sampler.request([WatchedKernel(os.getpid())])
        deadline = time.monotonic() + 2
        while sampler.latest is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sampler.latest is not None and os.getpid() in sampler.latest.trees
    finally:
        sampler.stop()
    assert Sampler(interval=1.0, idle_timeout=120).idle_timeout == 120


def test_the_history_length_setting_is_what_the_sparkline_gets() -> None:
    """`c.Qwen3JupyterMetrics.history_length` sized the sampler's history, but the payload
    cut it to 60 readings: the default kept 120 and served half, and raising it did nothing."""
    from qwen3_jupyter.server.payload import build_payload

    fake = FakeNvml([FakeGpu()])
    reader = NvmlReader(fake.module)
    sampler = Sampler(history_length=90, reader_factory=lambda: reader)
    running = threading.Event()  # a sampler thread's stop flag, not set
    try:
        for _ in range(100):
            assert sampler._publish(*sampler._sample(reader, ()), running)
    finally:
        reader.close()
    latest = sampler._latest
    assert latest is not None
    history = build_payload(latest, [], 1.0)["history"]
    assert len(history["timestamps"]) == len(history["gpu_memory_used"]["0"]) == 90


def test_history_starts_afresh_after_the_sampler_idles_out() -> None:
    """Readings from before an idle period must not be joined to today's in the sparkline."""
    import asyncio

    fake = FakeNvml([FakeGpu(used=70 * GiB)])
    sampler = Sampler(
        interval=0.05, idle_timeout=0.3, reader_factory=lambda: NvmlReader(fake.module)
    )
    sampler.request([])
    deadline = time.monotonic() + 5
    while (sampler.latest is None or len(sampler.latest.history) < 3) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    while sampler.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sampler.running
    fake.gpus[0].used = 1 * GiB  # freed while nobody watched
    sampler.request([])
    # On a thread of its own: Playwright's sync API (the browser tests, when this worker ran
    # them first) leaves an event loop running on this one, where asyncio.run() refuses.
    with ThreadPoolExecutor(1) as pool:
        sample = pool.submit(asyncio.run, sampler.current()).result()
    sampler.stop()
    assert sample is not None
    assert [p.gpu_memory_used["0"] for p in sample.history] == [1 * GiB] * len(sample.history)


def test_mig_instances_are_attributed_without_double_counting() -> None:
    pid = os.getpid()
    fake = FakeNvml(
        [
            FakeGpu(
                used=20 * GiB,
                mig=[
                    FakeGpu(total=40 * GiB, used=12 * GiB, processes=[FakeProcess(pid, 12 * GiB)]),
                    FakeGpu(
                        total=40 * GiB, used=8 * GiB, processes=[FakeProcess(FOREIGN_PID, 8 * GiB)]
                    ),
                ],
            )
        ]
    )
    reading = NvmlReader(fake.module).read()
    trees = process_trees([WatchedKernel(pid)])
    result = attribute(reading, trees, existing_pids(reading))
    assert result.kernels[pid] == {"0": 12 * GiB, "0/0": 12 * GiB, "0/1": 0}
    assert result.totals[pid] == 12 * GiB
    assert result.other == {"0": 8 * GiB, "0/0": 0, "0/1": 8 * GiB}


def test_a_busy_gpu_without_a_process_list_is_unknown_not_zero() -> None:
    fake = FakeNvml([FakeGpu(used=30 * GiB), FakeGpu(used=0)])
    reading = NvmlReader(fake.module).read()
    trees = process_trees([WatchedKernel(os.getpid())])
    result = attribute(reading, trees, existing_pids(reading))
    assert result.kernels[os.getpid()] == {"0": None, "1": 0}
    assert result.totals[os.getpid()] is None
    assert any("lists no process" in note for note in result.notes)


def test_a_refused_process_list_is_unknown_and_a_readable_mig_slice_still_counts() -> None:
    """NVML refusing a GPU's process list (no privileges) must read as unknown, not as "this
    kernel uses 0 there", even on an idle-looking GPU; a MIG parent that cannot be read at all
    still has its slices, and a kernel's total counts them."""
    pid = os.getpid()
    refused = {"nvmlDeviceGetComputeRunningProcesses": NO_PERMISSION}
    mig_only = {"nvmlDeviceGetMemoryInfo": NO_PERMISSION}
    slice_ = FakeGpu(total=40 * GiB, used=3 * GiB, processes=[FakeProcess(pid, 3 * GiB)])
    fake = FakeNvml(
        [
            FakeGpu(used=100 * MiB, processes=[FakeProcess(pid, 100 * MiB)], errors=refused),
            FakeGpu(mig=[slice_], errors=mig_only),
        ]
    )
    reading = NvmlReader(fake.module).read()
    trees = process_trees([WatchedKernel(pid)])
    result = attribute(reading, trees, existing_pids(reading))
    assert result.kernels[pid] == {"0": None, "1/0": 3 * GiB}
    assert result.totals[pid] is None, "unknown on GPU 0: no partial sum"
    assert any("will not list the processes on GPU 0" in note for note in result.notes)
    fake.gpus[0].errors.clear()
    reading = NvmlReader(fake.module).read()
    result = attribute(reading, trees, existing_pids(reading))
    assert result.totals[pid] == 100 * MiB + 3 * GiB


def test_a_remote_kernels_pid_is_never_taken_for_a_local_process() -> None:
    """A remote provisioner keeps the remote host's PID: that number here is some other local
    process, whose memory was shown as the notebook's."""
    from types import SimpleNamespace

    from jupyter_client.provisioning import LocalProvisioner

    from qwen3_jupyter.server.kernels import kernel_pid

    remote = SimpleNamespace(pid=os.getpid(), ip="10.0.0.7")  # a remote PID that exists here
    assert kernel_pid(SimpleNamespace(provisioner=remote)) is None
    local = LocalProvisioner.__new__(LocalProvisioner)
    local.pid = os.getpid()
    assert kernel_pid(SimpleNamespace(provisioner=local)) == os.getpid()


def test_a_killed_kernel_whose_marker_stayed_has_no_extension_loaded(tmp_path: Path) -> None:
    """SIGKILL leaves the marker file; a dead process cannot answer "Free memory"."""
    import json
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    marker = tmp_path / "kernel-1.qwen3-jupyter.json"
    marker.write_text(json.dumps({"pid": child.pid}))
    try:
        (alive,) = process_trees([WatchedKernel(child.pid, marker)]).values()
        assert alive.extension_loaded, "control: a live process with its marker"
    finally:
        child.kill()
        child.wait()
    (dead,) = process_trees([WatchedKernel(child.pid, marker)]).values()
    assert marker.exists() and dead.rss is None and not dead.extension_loaded


def test_a_kernel_started_through_a_wrapper_counts_the_kernels_whole_rss() -> None:
    """A kernelspec that starts Python as a child (`conda run`, a shell script without
    `exec`): the started process is the wrapper, and the kernel under it counted only its
    unique pages (476 of its 580 MiB). Its whole RSS counts now."""
    import subprocess

    import psutil

    kernel_code = "import time; b = bytearray(200 * 2**20); print(1, flush=True); time.sleep(60)"
    wrapper = subprocess.Popen(
        ["/bin/sh", "-c", f'{sys.executable} -c "{kernel_code}"; echo ended'],
        stdout=subprocess.PIPE,
    )
    try:
        assert wrapper.stdout is not None and wrapper.stdout.readline().strip() == b"1"
        (kernel,) = psutil.Process(wrapper.pid).children()
        kernel_rss = kernel.memory_info().rss
        assert kernel_rss > 200 * MiB
        (tree,) = process_trees([WatchedKernel(wrapper.pid)]).values()
        assert kernel.pid in tree.pids and tree.rss is not None
        wrapper_rss = psutil.Process(wrapper.pid).memory_info().rss
        assert kernel_rss <= tree.rss <= kernel_rss + wrapper_rss, (tree.rss, kernel_rss)
    finally:
        for process in psutil.Process(wrapper.pid).children(recursive=True):
            process.kill()
        wrapper.kill()
        wrapper.wait()


def test_a_zombie_kernel_process_is_gone_not_zero_rss(tmp_path: Path) -> None:
    """A killed kernel not yet reaped (a zombie) holds no memory and runs nothing: its tree is
    gone (RSS unknown), not a live process of 0 bytes."""
    import json
    import subprocess

    import psutil

    from qwen3_jupyter.server.payload import build_payload

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    marker = tmp_path / "kernel-1.qwen3-jupyter.json"
    marker.write_text(json.dumps({"pid": child.pid}))
    try:
        child.kill()
        deadline = time.monotonic() + 5
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        trees = process_trees([WatchedKernel(child.pid, marker)])
        (zombie,) = trees.values()
        assert zombie.gone and zombie.rss is None and not zombie.extension_loaded
        fake = FakeNvml([FakeGpu(used=GiB)])
        reader = NvmlReader(fake.module)
        reading = reader.read()
        reader.close()
        from qwen3_jupyter.memory import read_host
        from qwen3_jupyter.server.kernels import KernelInfo
        from qwen3_jupyter.server.sampler import Sample

        sample = Sample(reading, read_host(), trees, frozenset(), time.time())
        kernel = KernelInfo("k1", "python3", child.pid, "idle", "nb.ipynb", marker)
        (row,) = build_payload(sample, [kernel], 1.0)["kernels"]
        assert (row["rss"], row["execution_state"], row["extension_loaded"]) == (
            None,
            "dead",
            False,
        )
        assert row["gpu_memory_total"] is None
    finally:
        child.kill()
        child.wait()


def test_server_does_not_import_torch_or_the_magics(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys, qwen3_jupyter.server as s, qwen3_jupyter.server.handlers\n"
        "bad = [m for m in ('torch', 'transformers', 'qwen3_jupyter.magics') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_stop_that_gave_up_waiting_leaves_one_sampling_thread() -> None:
    """`stop` waits a while for a thread stuck in an NVML read, then resets the shared flag:
    the stuck thread, once awake, polled on beside the next request's thread (doubled points
    in the sparkline, two NVML readers open)."""
    slow = threading.Event()

    class SlowReader(NvmlReader):
        def read(self) -> Any:
            if slow.is_set():
                time.sleep(1.0)
            return super().read()

    sampler = Sampler(interval=0.05, idle_timeout=60, reader_factory=SlowReader)

    def threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if getattr(getattr(t, "_target", None), "__self__", None) is sampler
        ]

    try:
        sampler.request([WatchedKernel(os.getpid())])
        time.sleep(0.2)
        slow.set()
        time.sleep(0.1)  # the thread is inside a slow read now
        sampler.stop(timeout=0.1)
        slow.clear()
        sampler.request([WatchedKernel(os.getpid())])
        time.sleep(1.5)  # the stuck one has woken up
        assert len(threads()) == 1, threads()
        times = [point.timestamp for point in sampler._history]
        assert times == sorted(times), "the stuck thread's late reading joined the history"
    finally:
        sampler.stop()
