"""The decay benchmark runs end to end on `tiny` and measures what it claims to measure."""

from __future__ import annotations

import json
from pathlib import Path

from qwen3_jupyter.bench import decay


def test_decay_benchmark_on_tiny(model_cache: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert (
        decay.main(
            [
                "--model",
                "tiny",
                "--calls",
                "3",
                "--tokens",
                "8",
                "--batch-sizes",
                "1,2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Table A" in printed and "Table B" in printed
    assert "device cpu, model tiny, dtype float32, 8 new tokens" in printed
    data = json.loads((tmp_path / "decay-tiny-cpu.json").read_text())
    assert (tmp_path / "decay-tiny-cpu.png").stat().st_size > 1000
    by_name = {s["name"]: s for s in data["strategies"]}
    naive = by_name["naive (generate, result left in Out)"]
    ours = by_name["%qwen3"]
    # The naive row keeps every call's output (with its KV cache) alive in Out: it grows.
    assert naive["retained"][0] > 0
    assert naive["retained"][0] < naive["retained"][1] < naive["retained"][2]
    assert not naive["stable"]
    # Our magic leaves no tensor behind: exactly zero live tensor bytes above the baseline.
    assert ours["retained"] == [0, 0, 0]
    assert [b["batch_size"] for b in data["batches"]] == [1, 2]
    assert all(len(s["calls"]) == 3 for s in data["strategies"])
