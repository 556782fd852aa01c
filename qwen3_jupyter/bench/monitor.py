"""`python -m qwen3_jupyter.bench monitor`: what the memory monitor and its gauge cost a kernel.

Everything runs in one real kernel with the extension loaded. For each polling interval, a cell
keeps the kernel busy for a fixed time with memory either steady (sleeping) or changing
(allocating and freeing blocks every 0.25 s, on the GPU when torch sees one, else in host RAM).
Measured per run: the polling thread's CPU time (`time.thread_time()` inside the thread) as a
percentage of one core, polls per second, and the widget `comm_msg` messages the kernel sent
during the cell, scaled to a minute. Rows "no gauge" run the thread with no subscriber. The host
row shows machine-wide RAM, so other processes move it too: the last column counts those moves.
"""

from __future__ import annotations

import argparse
import ast
import time

from ._cli import non_negative_float, positive_float, positive_floats
from ._kernel import Kernel

START = """
from qwen3_jupyter.monitor import get_monitor
_m = get_monitor()
_m.interval = {interval}
_m.start()
time.sleep(0.3)
"""

MEASURE = """
import time
_m = get_monitor()
_cpu0, _polls0, _t0 = _m.thread_cpu_seconds, _m.polls, time.monotonic()
_seq0 = _m.latest().seq
{body}
_used = [f"{{s.host.used / 2**30:.1f}}" for s in _m.history() if s.seq > _seq0]
_others = sum(a != b for a, b in zip(_used, _used[1:]))
print(repr((_m.thread_cpu_seconds - _cpu0, _m.polls - _polls0, time.monotonic() - _t0, _others)))
"""

STEADY = "time.sleep({seconds})"

CHANGING = """
_end = time.monotonic() + {seconds}
_i = 0
try:
    import torch as _torch
    _cuda = _torch.cuda.is_available()
except ImportError:
    _cuda = False
while time.monotonic() < _end:
    _mib = 64 * (1 + _i % 8)
    if _cuda:
        _block = _torch.ones(_mib * 2**18, device="cuda")
    else:
        _block = bytearray(b"x") * (_mib * 2**20)
    time.sleep(0.25)
    del _block
    if _cuda:
        _torch.cuda.empty_cache()
    _i += 1
"""


def run_one(kernel: Kernel, interval: float, memory: str, seconds: float) -> dict[str, float]:
    body = (STEADY if memory == "steady" else CHANGING).format(seconds=seconds)
    setup = kernel.run("import time\n" + START.format(interval=interval))
    if setup.status != "ok":
        raise RuntimeError(f"setup failed: {setup.error_line}")
    execution = kernel.run(MEASURE.format(body=body), timeout=seconds + 120)
    if execution.status != "ok":
        raise RuntimeError(f"cell failed: {execution.error_line}")
    cpu, polls, wall, host_changes = ast.literal_eval(execution.stdout.strip().splitlines()[-1])
    messages = sum(
        1
        for m in execution.of_type("comm_msg")
        if m["content"].get("data", {}).get("method") == "update"
    )
    return {
        "cpu_percent": 100.0 * cpu / wall,
        "polls_per_s": polls / wall,
        "messages_per_min": 60.0 * messages / wall,
        "ms_per_poll": 1000.0 * cpu / max(1, polls),
        "host_changes_per_min": 60.0 * host_changes / wall,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench monitor", description=__doc__
    )
    parser.add_argument(
        "--intervals",
        type=positive_floats,
        default="0.5,0.1",
        help="polling intervals, seconds, comma-separated (0.5,0.1)",
    )
    parser.add_argument(
        "--seconds", type=positive_float, default=8.0, help="length of each gauge run (8)"
    )
    parser.add_argument(
        "--bare-seconds",
        type=non_negative_float,
        default=4.0,
        help="length of each no-gauge run (4; 0: skip)",
    )
    args = parser.parse_args(argv)
    intervals: list[float] = args.intervals
    kernel = Kernel({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    rows = []
    try:
        loaded = kernel.run("%load_ext qwen3_jupyter")
        if loaded.status != "ok":
            raise SystemExit(f"bench monitor: could not load the extension: {loaded.error_line}")
        started = time.monotonic()
        if args.bare_seconds > 0:
            for interval in intervals:
                rows.append(
                    (
                        interval,
                        "no gauge",
                        "steady",
                        run_one(kernel, interval, "steady", args.bare_seconds),
                    )
                )
        kernel.run("%qwen3_gauge")
        for interval in intervals:
            for memory in ("steady", "changing"):
                print(f"  interval {interval} s, {memory} memory…", flush=True)
                rows.append(
                    (interval, "gauge", memory, run_one(kernel, interval, memory, args.seconds))
                )
        notice = kernel.run(
            "from qwen3_jupyter.monitor import get_monitor\n"
            "_s = get_monitor().latest()\n"
            "print(_s.nvml_reason or f'NVML driver {_s.driver_version}, {len(_s.gpus)} GPU(s)')"
        ).stdout.strip()
        elapsed = time.monotonic() - started
    finally:
        kernel.shutdown()
    print()
    print(f"NVML: {notice}")
    print(
        "| interval | view | memory | thread CPU (% of one core) | ms CPU per poll "
        "| polls/s | comm messages/min | machine-wide RAM changes/min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for interval, view, memory, r in rows:
        print(
            f"| {interval:g} s | {view} | {memory} | {r['cpu_percent']:.2f} | "
            f"{r['ms_per_poll']:.2f} | {r['polls_per_s']:.1f} | {r['messages_per_min']:.0f} | "
            f"{r['host_changes_per_min']:.0f} |"
        )
    print(
        "machine-wide RAM changes: how often the host row's used figure (0.1 GiB steps) moved; "
        "in a steady row that is other processes (a message each, this kernel steady), in a "
        "changing row on the CPU mostly this kernel's own allocations"
    )
    print(f"target: thread CPU < 1% of one core at 0.5 s · measured in {elapsed:.0f} s")
    return 0
