"""The memory readers: NVML through the fake pynvml, and the host / torch readers for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.memory import GiB, MiB, TorchDeviceMemory, format_bytes, read_host
from qwen3_jupyter.nvml import (
    NvmlReader,
    process_gpu_memory,
    process_memory_by_uuid,
    torch_device_for,
    visible_gpus,
)
from tests.fake_nvml import (
    DRIVER_NOT_LOADED,
    FUNCTION_NOT_FOUND,
    GPU_IS_LOST,
    LIBRARY_NOT_FOUND,
    NO_PERMISSION,
    SELF,
    UNKNOWN,
    FakeGpu,
    FakeNvml,
    FakeProcess,
    child_env,
    gpu_uuid,
)


def _read(fake: FakeNvml):
    reader = NvmlReader(fake.module)
    try:
        return reader.read()
    finally:
        reader.close()


def test_one_gpu_uses_the_v2_memory_call() -> None:
    fake = FakeNvml([FakeGpu(used=3 * GiB, utilization=42)])
    reading = _read(fake)
    assert reading.available and reading.reason is None
    assert reading.driver_version == "550.54.15"
    (gpu,) = reading.gpus
    assert (gpu.index, gpu.uuid, gpu.name) == (0, gpu_uuid(0), "NVIDIA H100 80GB HBM3")
    assert gpu.memory_used == 3 * GiB  # v1 would add the driver's 512 MiB reservation
    assert gpu.memory_total == 80 * GiB
    assert gpu.memory_source == "v2"
    assert gpu.memory_reserved == 512 * MiB
    assert gpu.memory_free == 80 * GiB - 512 * MiB - 3 * GiB
    assert gpu.utilization == 42
    assert gpu.mig_parent is None
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 1
    assert fake.open_handles == 0


def test_four_gpus_in_nvml_order() -> None:
    fake = FakeNvml([FakeGpu(used=i * GiB) for i in range(4)])
    reading = _read(fake)
    assert [g.index for g in reading.gpus] == [0, 1, 2, 3]
    assert [g.memory_used for g in reading.gpus] == [0, GiB, 2 * GiB, 3 * GiB]
    assert len({g.uuid for g in reading.gpus}) == 4
    assert visible_gpus(reading, environ={}) == reading.gpus


def test_driver_without_v2_falls_back_to_v1() -> None:
    fake = FakeNvml([FakeGpu(used=GiB)], supports_v2=False)
    (gpu,) = _read(fake).gpus
    assert gpu.memory_source == "v1"
    assert gpu.memory_used == GiB + 512 * MiB
    assert (gpu.memory_reserved, gpu.memory_free) == (0, 80 * GiB - GiB - 512 * MiB)


def test_a_v2_call_failing_otherwise_falls_back_to_v1_where_v1_answers() -> None:
    """WSL drivers answer the v2 call with "Unknown Error" while v1 works: the GPU stays on
    screen, marked v1; a GPU whose v1 call fails too reports v2's error."""
    works = FakeGpu(used=GiB, errors={"nvmlDeviceGetMemoryInfo_v2": UNKNOWN})
    broken = FakeGpu(used=GiB, errors={"nvmlDeviceGetMemoryInfo": UNKNOWN})
    reading = _read(FakeNvml([works, broken]))
    (gpu,) = reading.gpus
    assert (gpu.index, gpu.memory_source, gpu.memory_used) == (0, "v1", GiB + 512 * MiB)
    assert reading.reason == "NVML error: GPU 1: Unknown Error"


def test_wrapper_without_v2_falls_back_to_v1() -> None:
    fake = FakeNvml([FakeGpu(used=GiB)], wrapper_has_v2=False)
    assert not hasattr(fake.module, "nvmlMemory_v2")
    (gpu,) = _read(fake).gpus
    assert gpu.memory_source == "v1"


def test_cuda_visible_devices_selects_gpu_2_of_4_by_index_or_uuid() -> None:
    reading = _read(FakeNvml.with_gpus(4))
    (by_index,) = visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": "2"})
    assert by_index.index == 2
    (by_uuid,) = visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": gpu_uuid(2)})
    assert by_uuid.index == 2
    prefix = gpu_uuid(2)[:12]  # CUDA accepts a unique UUID prefix
    assert [g.index for g in visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": prefix})] == [2]
    assert [g.index for g in visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": "3,1"})] == [
        3,
        1,
    ]
    # CUDA stops at the first invalid entry; an empty value hides every GPU
    assert [g.index for g in visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": "1,7,2"})] == [
        1
    ]
    assert visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": "-1"}) == ()


def test_torch_devices_are_matched_by_uuid_not_index() -> None:
    reading = _read(FakeNvml.with_gpus(4))
    # torch's cuda:0 is NVML's GPU 2; torch spells the uuid without the prefix sometimes
    torch_dev = TorchDeviceMemory(0, "H100", gpu_uuid(2).upper(), GiB, 2 * GiB, GiB, 2 * GiB)
    (gpu,) = visible_gpus(reading, (torch_dev,), environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert gpu.index == 2
    assert torch_device_for(gpu, (torch_dev,)) is torch_dev
    assert torch_device_for(reading.gpus[0], (torch_dev,)) is None
    no_uuid = TorchDeviceMemory(0, "H100", None, 0, 0, 0, 0)  # an old torch: fall back to the env
    (gpu,) = visible_gpus(reading, (no_uuid,), environ={"CUDA_VISIBLE_DEVICES": "3"})
    assert gpu.index == 3


def test_this_process_memory_is_unknown_not_zero_when_nvml_cannot_see_it() -> None:
    me = os.getpid()
    fake = FakeNvml(
        [
            FakeGpu(processes=[FakeProcess(SELF, 700 * MiB), FakeProcess(4242, GiB)]),
            FakeGpu(processes=[]),  # empty list
            FakeGpu(processes=[FakeProcess(999_999, GiB)]),  # only foreign (host) PIDs
            FakeGpu(processes=[FakeProcess(SELF, None)]),  # listed, memory not available
        ]
    )
    reading = _read(fake)
    assert reading.gpus[0].processes[0].pid == me
    assert process_gpu_memory(reading, {me}) == {0: 700 * MiB, 1: None, 2: None, 3: None}
    assert process_gpu_memory(reading, {me, 4242})[0] == 700 * MiB + GiB
    by_uuid = process_memory_by_uuid(reading, {me})
    assert by_uuid[gpu_uuid(0)] == 700 * MiB and by_uuid[gpu_uuid(1)] is None


def test_graphics_processes_are_listed_too() -> None:
    fake = FakeNvml(
        [FakeGpu(processes=[FakeProcess(10, GiB)], graphics=[FakeProcess(11, 5 * MiB)])]
    )
    (gpu,) = _read(fake).gpus
    assert {(p.pid, p.used_bytes) for p in gpu.processes} == {(10, GiB), (11, 5 * MiB)}


def test_mig_instances_are_their_own_readings() -> None:
    instances = [
        FakeGpu(
            name="NVIDIA A100 MIG 3g.40gb",
            total=40 * GiB,
            used=GiB,
            processes=[FakeProcess(SELF, GiB)],
        ),
        FakeGpu(name="NVIDIA A100 MIG 2g.20gb", total=20 * GiB, used=2 * GiB),
    ]
    fake = FakeNvml([FakeGpu(name="NVIDIA A100-SXM4-80GB", used=3 * GiB, mig=instances), FakeGpu()])
    reading = _read(fake)
    assert reading.reason is None
    labels = [(g.label, g.uuid[:4], g.mig_parent) for g in reading.gpus]
    assert labels == [
        ("GPU 0", "GPU-", None),
        ("GPU 0 / MIG 0", "MIG-", 0),
        ("GPU 0 / MIG 1", "MIG-", 0),
        ("GPU 1", "GPU-", None),
    ]
    mig0 = reading.gpus[1]
    assert (mig0.memory_total, mig0.memory_used, mig0.utilization) == (40 * GiB, GiB, None)
    # the whole GPU lists its instances' processes; a MIG UUID in CUDA_VISIBLE_DEVICES selects one
    assert process_gpu_memory(reading, {os.getpid()}) == {0: GiB, 1: None}
    chosen = visible_gpus(reading, environ={"CUDA_VISIBLE_DEVICES": instances[1].uuid})
    assert [g.name for g in chosen] == ["NVIDIA A100 MIG 2g.20gb"]


def test_a_mig_slice_shows_when_its_parent_gpu_cannot_be_read() -> None:
    """In a container given one MIG slice, NVML refuses the parent GPU's memory and process
    calls (NO_PERMISSION): the slice this kernel uses must still be read, with the refusal
    said, not "no GPU"."""
    slice_ = FakeGpu(name="NVIDIA H100 MIG 3g.40gb", total=40 * GiB, used=GiB)
    slice_.processes = [FakeProcess(SELF, GiB)]
    parent = FakeGpu(mig=[slice_], errors={"nvmlDeviceGetMemoryInfo": NO_PERMISSION})
    reading = _read(FakeNvml([parent]))
    assert [g.label for g in reading.gpus] == ["GPU 0 / MIG 0"]
    assert reading.reason == "NVML error: GPU 0: Insufficient Permissions"
    assert process_memory_by_uuid(reading, {os.getpid()}) == {reading.gpus[0].uuid: GiB}


def test_a_gpu_read_whose_mig_slices_cannot_be_listed_is_not_also_unread() -> None:
    """Before, a failing MIG listing put a GPU that was just read among the unread ones too:
    the gauge and sidebar showed its row and a red "could not be read" row, and the status bar
    said "GPU 0 unreadable" instead of its figure."""
    parent = FakeGpu(used=3 * GiB, mig=[FakeGpu()])
    parent.errors = {"nvmlDeviceGetMigDeviceHandleByIndex": UNKNOWN}
    reader = NvmlReader(FakeNvml([parent]).module)
    try:
        reading = reader.read()
        assert [(g.label, g.memory_used) for g in reading.gpus] == [("GPU 0", 3 * GiB)]
        assert reading.reason == "NVML error: GPU 0 MIG: Unknown Error"
        assert reader.unread == frozenset()
    finally:
        reader.close()


def test_process_lists_from_older_drivers_and_refused_ones() -> None:
    """nvidia-ml-py's process calls are the v3 entry points, missing before driver R510: the
    v2 call answers there. A list NVML refuses is unknown (`processes_listed` False), never an
    empty "no process"."""
    old_driver = {"nvmlDeviceGetComputeRunningProcesses": FUNCTION_NOT_FOUND}
    refused = {"nvmlDeviceGetComputeRunningProcesses": NO_PERMISSION}
    fake = FakeNvml(
        [
            FakeGpu(processes=[FakeProcess(SELF, GiB)], errors=old_driver),
            FakeGpu(processes=[FakeProcess(SELF, GiB)], errors=refused),
        ]
    )
    old, private = _read(fake).gpus
    assert [(p.pid, p.used_bytes) for p in old.processes] == [(os.getpid(), GiB)]
    assert old.processes_listed
    assert private.processes == () and not private.processes_listed


def test_one_devices_process_bytes_take_a_few_calls_not_a_poll() -> None:
    """What a cleanup report asks on the kernel's main thread: this process's bytes on the
    devices torch uses, found by UUID (torch may spell it without NVML's `GPU-` prefix),
    without polling every GPU and MIG slot; unknown where NVML cannot say."""
    me = os.getpid()
    fake = FakeNvml.with_gpus(8)
    fake.gpus[5].processes = [FakeProcess(SELF, 3 * GiB), FakeProcess(4242, GiB)]
    fake.gpus[6].errors = {"nvmlDeviceGetComputeRunningProcesses": NO_PERMISSION}
    reader = NvmlReader(fake.module)
    try:
        assert reader.process_bytes(gpu_uuid(5).removeprefix("GPU-"), {me}) == 3 * GiB
        assert sum(fake.calls.values()) <= 6, fake.calls
        assert reader.process_bytes(gpu_uuid(4), {me}) is None, "not listed: unknown, not 0"
        assert reader.process_bytes(gpu_uuid(6), {me}) is None, "refused: unknown"
        assert reader.process_bytes("GPU-no-such-device", {me}) is None
        assert fake.calls["nvmlDeviceGetCount"] == 0
    finally:
        reader.close()


def test_error_mid_run_is_reported_not_raised_and_reading_recovers() -> None:
    fake = FakeNvml.with_gpus(2)
    reader = NvmlReader(fake.module)
    assert len(reader.read().gpus) == 2
    fake.gpus[1].lost = True
    one_lost = reader.read()
    assert [g.index for g in one_lost.gpus] == [0]
    assert one_lost.available and one_lost.reason == "NVML error: GPU 1: GPU is lost"
    fake.gpus[1].lost = False
    fake.gpus[1].errors = {"nvmlDeviceGetMemoryInfo": GPU_IS_LOST}  # its handle still resolves
    assert reader.read().reason == "NVML error: GPU 1: GPU is lost", "said once, no MIG probe"
    fake.gpus[1].errors = {}
    fake.fail(GPU_IS_LOST)
    all_lost = reader.read()
    assert all_lost.available and all_lost.gpus == ()
    assert all_lost.reason == "NVML error: GPU is lost"
    fake.heal()
    assert len(reader.read().gpus) == 2
    reader.close()
    reader.close()
    assert (fake.init_count, fake.shutdown_count) == (1, 1)


def test_fail_after_reads_switch() -> None:
    fake = FakeNvml.with_gpus(1, fail_after_reads=2)
    reader = NvmlReader(fake.module)
    assert [bool(reader.read().gpus) for _ in range(4)] == [True, True, False, False]
    reader.close()


def test_no_driver_gives_one_line_reason_and_open_is_idempotent() -> None:
    fake = FakeNvml(init_error=LIBRARY_NOT_FOUND)
    reader = NvmlReader(fake.module)
    reader.open()
    reader.open()
    first, second = reader.read(), reader.read()
    assert not first.available and first.gpus == ()
    assert first.reason == second.reason
    assert first.reason is not None and "\n" not in first.reason
    assert "no NVIDIA driver" in first.reason and "host" in first.reason
    assert fake.calls["nvmlInit"] == 1  # a failed init is not retried every poll
    reader.close()
    assert fake.shutdown_count == 0


def test_real_pynvml_without_a_driver_never_raises() -> None:
    """This machine has nvidia-ml-py but no NVIDIA driver: the real module must say so."""
    code = (
        "from qwen3_jupyter.nvml import NvmlReader\n"
        "r = NvmlReader(); x = r.read(); r.close(); r.close()\n"
        "print(x.available); print(x.reason)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    if out[0] == "True":  # a machine with a driver: nothing to check here
        return
    assert out[1].startswith("NVML unavailable: ")


def test_child_process_gets_the_fake_from_the_environment(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    fake = FakeNvml([FakeGpu(used=GiB, processes=[FakeProcess(SELF, GiB)])])
    fake.stats_path = str(stats)
    env = {**os.environ, **child_env(fake, tmp_path / "site")}
    code = (
        "import os\n"
        "from qwen3_jupyter.nvml import NvmlReader, process_gpu_memory\n"
        "r = NvmlReader(); x = r.read(); r.close()\n"
        "print(x.gpus[0].memory_used, process_gpu_memory(x, {os.getpid()})[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(GiB), str(GiB)]
    from tests.fake_nvml import read_stats

    counted = read_stats(stats)
    assert counted["init_count"] == counted["shutdown_count"] == 1
    assert counted["reads"] == 1


def test_host_reader_and_format_bytes() -> None:
    host = read_host()
    assert 0 < host.process_rss < host.total
    assert 0 < host.available <= host.total
    assert format_bytes(None) == "unknown"
    assert format_bytes(1536 * MiB) == "1.5 GiB"
    assert format_bytes(2**48) == "256.0 TiB"  # what a checkpoint too large for any host asks


def _cgroup_tree(
    tmp_path: Path, version: int, limit: str, usage: int, cache: int
) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup and /proc/self/cgroup for one process in `/box`."""
    root = tmp_path / "cgroup"
    proc = tmp_path / "proc-cgroup"
    if version == 2:
        folder = root / "box"
        proc.write_text("0::/box\n")
        names = ("memory.max", "memory.current", "inactive_file")
    else:
        folder = root / "memory" / "box"
        proc.write_text("4:memory:/box\n3:cpuset:/\n")
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    folder.mkdir(parents=True)
    (folder / names[0]).write_text(limit + "\n")
    (folder / names[1]).write_text(f"{usage}\n")
    (folder / "memory.stat").write_text(f"anon 1\n{names[2]} {cache}\n")
    return root, proc


@pytest.mark.parametrize("version", [1, 2])
def test_host_memory_is_the_container_limit_when_lower(tmp_path: Path, version: int) -> None:
    from qwen3_jupyter.memory import GiB, MiB, read_host

    root, proc = _cgroup_tree(tmp_path, version, str(2 * GiB), 900 * MiB, 100 * MiB)
    host = read_host(root, proc)
    assert (host.source, host.total, host.used) == ("cgroup", 2 * GiB, 800 * MiB)
    assert host.available == 2 * GiB - 800 * MiB


@pytest.mark.parametrize("version", [1, 2])
def test_a_container_whose_cgroup_is_mounted_at_the_root_reads_its_limit(
    tmp_path: Path, version: int
) -> None:
    """Docker on cgroup v1: /proc/self/cgroup names the host's path (`/docker/<id>`), which does
    not exist in the container; its own cgroup is the mount's root. The host's RAM was shown."""
    from qwen3_jupyter.memory import GiB, MiB, read_host

    root, proc = _cgroup_tree(tmp_path, version, str(2 * GiB), 900 * MiB, 100 * MiB)
    mount = root if version == 2 else root / "memory"
    for item in (mount / "box").iterdir():
        item.rename(mount / item.name)
    (mount / "box").rmdir()
    proc.write_text(proc.read_text().replace("/box", "/docker/3f1c0d2a9b"))
    host = read_host(root, proc)
    assert (host.source, host.total, host.used) == ("cgroup", 2 * GiB, 800 * MiB)


@pytest.mark.parametrize("version", [1, 2])
def test_a_limit_above_the_process_cgroup_binds(tmp_path: Path, version: int) -> None:
    """A Kubernetes pod: the limit on the pod's cgroup, none on its container's."""
    from qwen3_jupyter.memory import GiB, MiB, read_host

    root, proc = _cgroup_tree(tmp_path, version, str(2 * GiB), 900 * MiB, 100 * MiB)
    mount = root if version == 2 else root / "memory"
    (mount / "box").rename(tmp_path / "pod")
    (tmp_path / "pod").rename(mount / "pod")
    leaf = mount / "pod" / "box"
    leaf.mkdir()
    limit_name = "memory.max" if version == 2 else "memory.limit_in_bytes"
    usage_name = "memory.current" if version == 2 else "memory.usage_in_bytes"
    (leaf / limit_name).write_text("max\n" if version == 2 else "9223372036854771712\n")
    (leaf / usage_name).write_text(f"{300 * MiB}\n")
    proc.write_text(proc.read_text().replace("/box", "/pod/box"))
    host = read_host(root, proc)
    assert (host.source, host.total, host.used) == ("cgroup", 2 * GiB, 800 * MiB)


@pytest.mark.parametrize(("version", "limit"), [(2, "max"), (1, str(9223372036854771712))])
def test_unlimited_cgroup_falls_back_to_the_host(tmp_path: Path, version: int, limit: str) -> None:
    import psutil

    from qwen3_jupyter.memory import read_host

    root, proc = _cgroup_tree(tmp_path, version, limit, 1, 0)
    host = read_host(root, proc)
    assert host.source == "host" and host.total == psutil.virtual_memory().total


def test_a_driver_that_loads_later_is_read_once_it_does() -> None:
    """nvmlInit's failure was kept for the reader's life: the sidebar's sampler never idles
    while a tab polls, so a driver loaded after the server started stayed "unavailable". A
    missing library is not asked again; a driver reset (Uninitialized) is opened again."""
    fake = FakeNvml([FakeGpu(used=3 * GiB)], init_error=DRIVER_NOT_LOADED)
    reader = NvmlReader(fake.module)
    assert reader.read().reason == (
        "NVML unavailable: the NVIDIA driver is not loaded; showing host and torch memory only"
    )
    fake.init_error = None
    assert not reader.read().available, "not asked again at once"
    reader.INIT_RETRY_S = 0.0
    loaded = reader.read()
    assert loaded.available and loaded.gpus[0].memory_used == 3 * GiB
    reader.close()
    missing = FakeNvml(init_error=LIBRARY_NOT_FOUND)
    never = NvmlReader(missing.module)
    never.INIT_RETRY_S = 0.0
    never.read()
    missing.init_error = None
    assert not never.read().available and missing.init_count == 0


def test_a_cleanups_process_figure_comes_back_after_a_driver_reset() -> None:
    """`process_bytes` (the cleanup report's NVML figure) never opened NVML again after a
    driver reset (Uninitialized), unlike `read`: the report said "unknown" until unload."""
    me = os.getpid()
    fake = FakeNvml.with_gpus(1)
    fake.gpus[0].processes = [FakeProcess(SELF, 3 * GiB)]
    reader = NvmlReader(fake.module)
    try:
        assert reader.process_bytes(gpu_uuid(0), {me}) == 3 * GiB
        fake.shutdown_count += 1  # the reset: NVML answers Uninitialized until nvmlInit
        assert reader.process_bytes(gpu_uuid(0), {me}) is None
        assert reader.process_bytes(gpu_uuid(0), {me}) == 3 * GiB
        assert fake.init_count == 2
    finally:
        reader.close()


def test_close_waits_for_a_read_in_progress_instead_of_shutting_nvml_under_it() -> None:
    """A gauge opened as the last one's polling thread ends: that thread shuts NVML down while
    the new one reads. The reader's own lock makes the shutdown wait for the read."""
    import threading

    fake = FakeNvml([FakeGpu(used=3 * GiB)])
    reader = NvmlReader(fake.module)
    reader.open()
    fake.reads_open.clear()  # the next read blocks in the driver
    readings: list[Any] = []
    reading = threading.Thread(target=lambda: readings.append(reader.read()))
    reading.start()
    closing = threading.Thread(target=reader.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive() and fake.shutdown_count == 0, "NVML shut down under a read"
    fake.reads_open.set()
    reading.join(5)
    closing.join(5)
    assert readings[0].available and len(readings[0].gpus) == 1
    assert fake.shutdown_count == 1 and fake.open_handles == 0


UNLOAD_WITH_HEAP_SLACK = """
import ctypes, psutil
rss = lambda: psutil.Process().memory_info().rss
from qwen3_jupyter.session import SESSION
model = SESSION.loaded.model
model._notes = [bytes(1000) + bytes([i % 256]) for i in range(40_000)]  # ~40 MiB, C heap
pin = bytes(1001)  # allocated above them: the heap's top cannot shrink on its own
del model
report = SESSION.unload()
untrimmed = rss()
ctypes.CDLL("libc.so.6").malloc_trim(0)
slack = untrimmed - rss()
"""


def test_unload_on_cpu_returns_the_host_heap_it_freed(fresh_kernel: Any) -> None:
    """What the model and its last calls held on the C heap was freed at unload but kept by
    malloc (measured: 160 MiB with the tiny model), so the unload report's "after" was too high
    until a later cleanup trimmed the heap."""
    from tests.kernel import ok

    ok(fresh_kernel, "%load_ext qwen3_jupyter")
    ok(fresh_kernel, "%qwen3 --model tiny --greedy --max-new-tokens 2 hi")
    ok(fresh_kernel, UNLOAD_WITH_HEAP_SLACK)
    assert fresh_kernel.value("(report.model_freed, report.memory_kind)") == (True, "host RSS")
    slack = fresh_kernel.value("slack")
    assert slack <= 8 * MiB, f"unload left {format_bytes(slack)} of heap slack"
    freed = fresh_kernel.value("report.before - report.after")
    assert freed >= 30 * MiB, f"unload reports {format_bytes(freed)} of a 40 MiB heap"


def test_a_torch_still_being_imported_is_not_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gauge's thread polled the torch the first call was still importing: "partially
    initialized module 'torch' has no attribute 'cuda'", a traceback in that call's cell."""
    import importlib.machinery
    import types

    from qwen3_jupyter.memory import cuda_in_use, read_torch

    half = types.ModuleType("torch")
    half.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    half.__spec__._initializing = True  # type: ignore[attr-defined]  # what importlib sets
    monkeypatch.setitem(sys.modules, "torch", half)
    assert cuda_in_use() is False
    assert read_torch() == ()
