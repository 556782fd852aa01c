"""allocator_diff.py: the GPU tests' failure message, proven on synthetic torch-shaped snapshots.

The GPU round trips in test_cleanup.py only run on a GPU; these tests make sure that, when one
fails there, its message names the blocks freed beyond the test's own holder, with the stacks
that allocated and freed them, instead of failing inside the diagnostics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from tests.allocator_diff import (
    HISTORY_ENTRIES,
    MiB,
    compact_snapshot,
    diff_blocks,
    explain,
    free_stack,
    kernel_setup,
    stats_delta,
)

CELL = {"filename": "/tmp/ipykernel_1/2.py", "line": 1, "name": "<module>"}
DISPATCH = {"filename": "/x/torch/nn/modules/module.py", "line": 1784, "name": "_call_impl"}
FORWARD = {"filename": "/x/transformers/modeling_qwen3.py", "line": 300, "name": "forward"}
RELEASE = {"filename": "/x/qwen3_jupyter/cleanup.py", "line": 310, "name": "release_last_exception"}


def _block(
    address: int, size: int, *frames: dict[str, Any], state: str = "active_allocated"
) -> dict[str, Any]:
    return {
        "address": address,
        "size": size,
        "requested_size": size,
        "state": state,
        "frames": list(frames),
    }


def _snapshot(
    blocks: list[dict[str, Any]], trace: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`torch.cuda.memory._snapshot()`'s shape: segments of blocks, one trace list per device."""
    return {
        "segments": [
            {
                "device": 0,
                "address": blocks[0].get("address", 0) if blocks else 0,
                "total_size": sum(b["size"] for b in blocks),
                "stream": 0,
                "segment_type": "large",
                "segment_pool_id": (0, 0),
                "allocated_size": 0,
                "active_size": 0,
                "blocks": blocks,
            }
        ],
        "device_traces": [trace or []],
        "allocator_settings": {},
    }


def _state(
    blocks: list[dict[str, Any]], trace: list[dict[str, Any]] | None = None, **stats: int
) -> dict[str, Any]:
    state = compact_snapshot(_snapshot(blocks, trace))
    state["allocated"] = sum(b["size"] for b in blocks if b["state"] == "active_allocated")
    state["stats"] = {"allocated_bytes.all.current": state["allocated"], **stats}
    state["history"] = "on"
    return dict(json.loads(json.dumps(state)))  # what travels from the kernel


MODEL = _block(0x1000_0000, 20 * MiB, FORWARD)
STRANGER = _block(0x7000_0000, 256 * MiB, CELL)  # alive at the baseline, not the test's
OWN = _block(0x9000_0000, 256 * MiB, CELL)


def test_compact_keeps_live_blocks_of_one_device_with_short_stacks() -> None:
    free = _block(0x2000_0000, 2 * MiB, state="inactive")
    pending = _block(0x2020_0000, 2 * MiB, state="active_pending_free")
    snapshot = _snapshot([MODEL, free, pending])
    snapshot["segments"].append({"device": 1, "address": 0, "blocks": [OWN]})
    compact = compact_snapshot(snapshot, max_frames=1)
    assert [b["address"] for b in compact["blocks"]] == [MODEL["address"]]
    assert compact["blocks"][0]["frames"] == ["/x/transformers/modeling_qwen3.py:300 forward"]
    deep = _block(0x10, 512, DISPATCH, FORWARD, CELL)
    frames = compact_snapshot(_snapshot([deep]))["blocks"][0]["frames"]
    assert frames == [
        "/x/transformers/modeling_qwen3.py:300 forward",
        "/tmp/ipykernel_1/2.py:1 <module>",
    ], "dispatch frames are dropped"


def test_compact_gives_addresses_to_blocks_of_older_torch() -> None:
    first = _block(0, MiB)
    second = _block(0, 2 * MiB)
    del first["address"], second["address"]
    snapshot = _snapshot([first, second])
    snapshot["segments"][0]["address"] = 0x5000
    addresses = [b["address"] for b in compact_snapshot(snapshot)["blocks"]]
    assert addresses == [0x5000, 0x5000 + MiB]


def test_compact_keeps_only_the_trace_since_the_last_state() -> None:
    trace = [
        {"action": "alloc", "addr": 1, "size": 8, "time_us": 10, "frames": [CELL]},
        {"action": "snapshot", "addr": 0, "size": 0, "time_us": 20, "frames": []},
        {"action": "free_requested", "addr": 1, "size": 8, "time_us": 30, "frames": [RELEASE]},
    ]
    compact = compact_snapshot(_snapshot([MODEL], trace), since_us=10)
    assert [e["action"] for e in compact["trace"]] == ["free_requested"]
    assert compact["now_us"] == 30
    for entry in trace:
        del entry["time_us"]  # a torch that does not time its trace: keep the newest entries
    untimed = compact_snapshot(_snapshot([MODEL], trace), since_us=10, max_trace=1)
    assert [e["action"] for e in untimed["trace"]] == ["free_requested"]


def test_diff_blocks_tells_gone_from_new_and_a_reused_address_apart() -> None:
    reused = dict(STRANGER, frames=["/other.py:1 f"])
    gone, new = diff_blocks([MODEL, STRANGER], [MODEL, reused])
    assert [b["frames"] for b in gone] == [STRANGER["frames"]]
    assert [b["frames"] for b in new] == [["/other.py:1 f"]]
    assert diff_blocks([MODEL], [MODEL]) == ([], []), "control: nothing changed"


def test_stats_delta_lists_only_changed_counters() -> None:
    before = {"allocated_bytes.all.current": 5, "num_device_free": 1, "allocated_bytes.all.peak": 9}
    after = {"allocated_bytes.all.current": 3, "num_device_free": 1, "allocated_bytes.all.peak": 1}
    assert stats_delta(before, after) == {"allocated_bytes.all.current": (5, 3)}


def test_free_stack_is_the_newest_free_of_that_address() -> None:
    trace = [
        {"action": "free_requested", "addr": 7, "frames": ["old"]},
        {"action": "alloc", "addr": 7, "frames": ["alloc"]},
        {"action": "free_requested", "addr": 7, "frames": ["new"]},
    ]
    assert free_stack(trace, 7) == ["new"]
    assert free_stack(trace, 8) == []


def _issue_round_trip() -> tuple[dict[str, Any], ...]:
    """The failing exception test of issue 11: a 256 MiB block alive at the baseline that is
    not the test's own, freed by the cleanup together with the test's own 256 MiB."""
    figures = {
        "baseline": 322639360,
        "held": 591074816,
        "after": 54203904,
        "gc_pass": "gc of 2,507 new objects",
        "actions": [
            ["output cache", 0, [], None],
            ["last exception", 512 * MiB, ["sys.last_traceback", "InteractiveTB.tb"], None],
            ["cycles", 0, [], None],
        ],
    }
    baseline = _state([MODEL, STRANGER], num_device_free=0)
    held = _state([MODEL, STRANGER, OWN])
    freeing = [
        {"action": "free_requested", "addr": a, "size": 1, "time_us": 99, "frames": [RELEASE]}
        for a in (STRANGER["address"], OWN["address"])
    ]
    after = _state([MODEL], freeing, num_device_free=2)
    return figures, baseline, held, after


def test_explain_names_what_was_freed_beyond_the_holder() -> None:
    figures, baseline, held, after = _issue_round_trip()
    message = explain(figures, baseline, held, after)
    assert "baseline 307.7 MiB, held 563.7 MiB, after 51.7 MiB" in message
    assert "after - baseline -256.0 MiB" in message
    assert "cleanup gc: gc of 2,507 new objects" in message
    assert "last exception: 512.0 MiB (sys.last_traceback, InteractiveTB.tb)" in message
    section = message.split("freed beyond the test's own blocks (alive at the baseline):")[1]
    assert section.startswith(" 1 block(s), 256.0 MiB"), message
    assert f"{STRANGER['address']:#x}" in section and f"{OWN['address']:#x}" not in section
    assert "/tmp/ipykernel_1/2.py:1 <module>" in section, "where it was allocated"
    assert "freed at:\n      /x/qwen3_jupyter/cleanup.py:310 release_last_exception" in section
    assert "num_device_free: 0 -> 2" in message


def test_explain_of_a_clean_round_trip_has_nothing_to_blame() -> None:
    baseline = _state([MODEL])
    held = _state([MODEL, OWN])
    figures = {"baseline": 1, "held": 2, "after": 1, "gc_pass": "x", "actions": []}
    message = explain(figures, baseline, held, _state([MODEL]))
    assert "freed beyond" not in message and "still alive" not in message


def test_explain_names_a_holder_left_alive_and_a_block_from_between_tests() -> None:
    figures = {"baseline": 1, "held": 2, "after": 2, "gc_pass": "x", "actions": []}
    previous = _state([MODEL])
    baseline = _state([MODEL, STRANGER])
    message = explain(figures, baseline, _state([MODEL, STRANGER, OWN]), baseline | {}, previous)
    assert "appeared between the previous test's cleanup and this baseline: 1 block(s)" in message
    kept = explain(figures, previous, _state([MODEL, OWN]), _state([MODEL, OWN]))
    assert "the test's own blocks still alive after the cleanup: 1 block(s), 256.0 MiB" in kept


def test_explain_without_snapshots_still_gives_figures_and_actions() -> None:
    figures, *_ = _issue_round_trip()
    cpu = {"allocated": 5, "history": "not asked"}
    message = explain(figures, cpu, cpu, cpu)
    assert "last exception: 512.0 MiB" in message
    assert "blocks: not available (no allocator snapshot on this device" in message


BIG_TENSOR_GROWTH = """
_before = _qj_allocated()
_big = torch.ones(64 * 2**20 // 4)
print(_qj_allocated() - _before)
"""


def test_kernel_setup_runs_and_degrades_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("would switch CUDA allocation history on in the test process")
    cpu: dict[str, Any] = {}
    exec(kernel_setup("cpu"), cpu)
    cpu["_qj_state"]()
    state = json.loads(capsys.readouterr().out)
    assert state["history"] == "not asked" and "blocks" not in state
    if cpu["_qj_mallinfo2"] is not None:
        # In a new process, as in the kernels it is made for: in this long-lived one glibc can
        # serve even a 64 MiB tensor from heap memory that earlier tests freed (seen twice
        # under pytest-xdist), and the mapped bytes do not move.
        grown = subprocess.run(
            [sys.executable, "-c", kernel_setup("cpu") + BIG_TENSOR_GROWTH],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.split()[-1]
        assert int(grown) >= 64 * MiB, "a big tensor is one mapping"
    cuda: dict[str, Any] = {}
    exec(kernel_setup("cuda"), cuda)
    assert cuda["_qj_history"].startswith("unavailable: "), "guarded on a torch without CUDA"


def test_kernel_state_on_cuda_reads_torch_shaped_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CUDA half of the kernel code, run against a stand-in torch.cuda (no GPU here)."""
    calls: list[dict[str, Any]] = []
    snapshot = _snapshot([MODEL, OWN])
    memory = SimpleNamespace(
        _record_memory_history=lambda **kwargs: calls.append(kwargs),
        _snapshot=lambda: snapshot,
    )
    cuda = SimpleNamespace(
        memory=memory,
        synchronize=lambda: None,
        memory_allocated=lambda: 276 * MiB,
        memory_stats=lambda: {"allocated_bytes.all.current": 276 * MiB, "api": "x"},
        current_device=lambda: 0,
    )
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    namespace: dict[str, Any] = {}
    exec(kernel_setup("cuda"), namespace)
    assert namespace["_qj_history"] == "on"
    assert calls == [
        {"enabled": "all", "context": "all", "stacks": "python", "max_entries": HISTORY_ENTRIES}
    ]
    namespace["_qj_state"](-1)
    state = json.loads(capsys.readouterr().out)
    assert state["allocated"] == 276 * MiB
    assert state["stats"] == {"allocated_bytes.all.current": 276 * MiB}
    assert [b["address"] for b in state["blocks"]] == [MODEL["address"], OWN["address"]]
    memory._snapshot = lambda: 1 / 0
    namespace["_qj_state"](-1)
    assert "ZeroDivisionError" in json.loads(capsys.readouterr().out)["snapshot_error"]
