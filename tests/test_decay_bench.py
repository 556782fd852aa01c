"""The decay benchmark runs end to end on `tiny` and measures what it claims to measure."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.bench import decay
from qwen3_jupyter.bench._kernel import Kernel

QUICK_SECONDS = 180
"""`--quick` promises minutes on a GPU; on `tiny` on a CPU it has far less work to do."""


def test_quick_decay_benchmark_on_tiny(
    model_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert decay.main(["--quick", "--model", "tiny", "--tokens", "8", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Table A" in printed and "Table B" in printed
    assert "device cpu, model tiny, dtype float32, 8 new tokens" in printed
    assert "5 calls per strategy" in printed
    assert "| strategy | call 1 | call 5 | peak kernel RSS |" in printed, "no call 10 of 5"
    data = json.loads((tmp_path / "decay-tiny-cpu.json").read_text())
    assert f"finished in {data['seconds']:.0f} s" in printed
    assert data["seconds"] < QUICK_SECONDS, data["seconds"]
    assert (tmp_path / "decay-tiny-cpu.png").stat().st_size > 1000
    by_name = {s["name"]: s for s in data["strategies"]}
    naive = by_name["naive (generate, result left in Out)"]
    ours = by_name["%qwen3"]
    # The naive row keeps every call's output (with its KV cache) alive in Out: it grows.
    assert naive["retained"][0] > 0
    assert naive["retained"] == sorted(set(naive["retained"])), "strictly growing"
    assert not naive["stable"]
    # Our magic leaves no tensor behind: exactly zero live tensor bytes above the baseline.
    assert ours["retained"] == [0] * 5
    assert [b["batch_size"] for b in data["batches"]] == [1, 4, 8]
    assert all(len(s["calls"]) == 5 for s in data["strategies"])
    assert all(c["cuda_device_allocs"] is None for c in ours["calls"]), "no CUDA here"
    assert "cudaMalloc" not in printed


def test_quick_sets_defaults_that_explicit_flags_override() -> None:
    full = decay.parse_args([])
    assert (full.calls, full.batch_sizes) == (10, "1,2,4,8")
    quick = decay.parse_args(["--quick"])
    assert (quick.calls, quick.batch_sizes) == (5, "1,4,8")
    mine = decay.parse_args(["--quick", "--calls", "3", "--batch-sizes", "2"])
    assert (mine.calls, mine.batch_sizes) == (3, "2")
    for bad in (["--calls", "0"], ["--batch-sizes", "1,x"], ["--batch-sizes", "0,4"]):
        with pytest.raises(SystemExit):
            decay.parse_args(bad)


def test_device_allocs_line_only_on_cuda() -> None:
    cpu = [{"name": "%qwen3", "calls": [{"cuda_device_allocs": None}]}]
    assert decay.device_allocs_line(cpu) == ""
    cuda = [
        {"name": "naive", "calls": [{"cuda_device_allocs": 14}, {"cuda_device_allocs": 2}]},
        {"name": "%qwen3", "calls": [{"cuda_device_allocs": 9}, {"cuda_device_allocs": 0}]},
    ]
    assert decay.device_allocs_line(cuda) == (
        "cudaMalloc calls during each call: naive 14, 2 · %qwen3 9, 0"
    )


def test_table_a_shows_the_calls_that_were_made() -> None:
    assert decay._call_columns(10) == [1, 5, 10]
    assert decay._call_columns(5) == [1, 5]
    assert decay._call_columns(3) == [1, 3]
    assert decay._call_columns(1) == [1]


def _run(latencies: list[float], retained: list[int] | None = None) -> decay.StrategyRun:
    run = decay.StrategyRun("s", "")
    for index, latency in enumerate(latencies):
        kept = retained[index] if retained is not None else 0
        run.calls.append(decay.Call(latency, 0, 0, kept))
    return run


def test_stable_compares_windows_that_share_no_call() -> None:
    """With 3 calls or fewer the first and last windows were the same calls (a 55% slowdown
    over 2 calls read "stable: yes"); with 5 they shared call 3."""
    assert _run([0.40, 0.62]).stable() is False
    assert _run([0.40, 0.41]).stable() is True
    assert _run([1.0]).stable() is None, "one call: nothing later to compare it with"
    # 5 calls: the first 2 against the last 2, call 3 in neither. Windows of 3 both held it,
    # and it was the median of both: these later calls, 9% slower, read as stable.
    assert _run([1.0, 1.25, 1.2, 1.3, 1.15]).stable() is False
    assert _run([1.0, 1.0, 9.0, 1.02, 1.02]).stable() is True
    # 6 calls: the first 3 against the last 3.
    assert _run([1.0, 1.0, 1.0, 1.3, 1.3, 1.3]).stable() is False
    assert _run([1.0, 1.0, 1.0, 1.0, 1.02, 1.02]).stable() is True
    assert _run([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0, 0, 8]).stable() is False, "memory"


def test_table_a_says_why_one_call_has_no_verdict() -> None:
    table = decay.table_a([_run([1.0])], cuda=False)
    assert table.splitlines()[2].endswith("| n/a |")
    assert "n/a" in table.splitlines()[-1] and "one call" in table.splitlines()[-1]


def test_the_warm_up_decodes_eagerly_and_memory_is_read_on_the_models_device(
    kernel_env: dict[str, str],
) -> None:
    """Every strategy's kernel starts with the model loaded and nothing of the fast path: on
    CUDA a default warm-up call built the decode step and kept its cache, in the naive rows'
    kernels too ($QWEN3_JUPYTER_DECODE=fast makes a CPU kernel decode as CUDA's default does).
    And memory is read where the model is: `--device cpu` on a GPU machine (torch seeing a GPU
    here) read the idle GPU's bytes instead of the CPU's live tensors."""
    kernel = Kernel({**kernel_env, "QWEN3_JUPYTER_DECODE": "fast", "QWEN3_JUPYTER_DTYPE": "bf16"})
    try:
        # the dtype the kernel chose: the header said float32 for every CPU run
        assert decay._prepare_kernel(kernel, "tiny", "cpu", 4) == "bfloat16"
        assert kernel.value("(_qwen3.engine, sorted(_S.engines))") == ("eager", [])
        decay._ok(kernel, "torch.cuda.is_available = lambda: True")
        measured = decay._json_line(decay._ok(kernel, decay.MEASURE.format()).stdout)
        assert measured["cuda"] is False and "allocated" not in measured
        assert measured["live"] > 0, "the CPU's live tensors: the model's weights at least"
        decay._ok(kernel, "import os; os.environ['QWEN3_JUPYTER_DECODE'] = 'eager'")
        decay._ok(kernel, decay.RESET_PEAK)
        batch = decay.BATCH_CELL.format(prompt="hi", items=2, size=2, n=4)
        assert decay._json_line(decay._ok(kernel, batch).stdout)["cuda_peak"] is None
    finally:
        kernel.shutdown()


def test_the_header_says_the_dtype_the_kernels_loaded() -> None:
    """`run_benchmark` wrote `'bfloat16' if cuda else 'float32'`, whatever the kernels ran."""
    runs = [decay.StrategyRun("a", "", dtype="bfloat16"), decay.StrategyRun("b", "", "bfloat16")]
    when = datetime(2025, 1, 2, tzinfo=timezone.utc)
    header = decay.run_header("tiny", False, decay._dtypes(runs), 8, 5, when)
    assert header.startswith("device cpu, model tiny, dtype bfloat16, 8 new tokens per call")
    assert "5 calls per strategy, 2025-01-02; memory means CPU" in header


def test_table_b_says_time_per_item_for_what_it_is() -> None:
    """The batch's seconds over its prompts was labelled "latency per item"."""
    row = decay.BatchRow(4, 2.0, 0.5, 64.0, 2**20, 2**10, None)
    table = decay.table_b([row], cuda=False)
    assert "| batch size | peak kernel RSS | peak generation tensors | time per item |" in table
    assert "| 4 | 1.0 MiB | 1.0 KiB | 0.50 s | 64.0 |" in table
    assert "latency" not in table.split("\n\n")[0]
    assert "time per item: the batch's seconds over its prompts" in table


def test_an_interrupted_run_says_how_far_it_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shut: list[Any] = []
    monkeypatch.setattr(decay, "start_kernels", lambda count: ["k"] * count)
    monkeypatch.setattr(decay, "shut_down_all", shut.extend)
    done: list[str] = []

    def strategy(name: str, *args: Any) -> decay.StrategyRun:
        if done:
            raise KeyboardInterrupt
        done.append(name)
        return decay.StrategyRun(name, "")

    monkeypatch.setattr(decay, "run_strategy", strategy)
    with pytest.raises(KeyboardInterrupt, match=r"^1 of 4 strategies measured \(above\); nothing"):
        decay.run_benchmark("tiny", 2, 4, "cpu", (1,), tmp_path / "out", log=lambda line: None)
    assert shut == ["k"] * 3, "the kernels not yet used are shut down"
    assert not (tmp_path / "out").exists()
