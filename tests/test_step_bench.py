"""`bench step`: where one fast decode step's time goes, run on the CPU on `tiny` (on a GPU the
same code profiles the CUDA graph's kernels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen3_jupyter.bench import step


def test_the_step_profile_accounts_for_the_step(
    model_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "step.json"
    assert step.main(["--steps", "5", "--top", "3", "--whole", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["model"] == "tiny" and figures["device"] == "cpu"
    assert figures["compiled"] and not figures["captured"] and "direct_ms" not in figures
    profile = figures["profile"]
    assert figures["step_ms"] > 0 and profile["per_step"] > 10
    assert len(profile["top"]) == 3
    times = [row["us_per_step"] for row in profile["top"]]
    assert times == sorted(times, reverse=True) and times[0] <= profile["us_per_step"]
    # the step's own operators, not the profiler's or the harness's
    assert any(row["name"].startswith("aten::") for row in profile["top"])
    # the step compiled whole, timed and profiled beside it in the same run
    assert figures["whole_ms"] > 0 and figures["whole_compile_s"] > 0
    assert figures["whole_profile"]["per_step"] > 10
    shown = capsys.readouterr().out
    assert "decode step: tiny on CPU (float32), batch 1 × cache 4096, compiled" in shown
    assert "operators per step taking" in shown
    assert "compiled whole (all layers in one graph):" in shown
    assert "three parts / whole: " in shown


def test_bad_input_is_a_one_line_error(model_cache: Path) -> None:
    with pytest.raises(SystemExit, match=r"--steps 5000: the cache has room for \d+ more steps"):
        step.main(["--steps", "5000"])
    with pytest.raises(SystemExit, match=r"^bench step: model 'nonsense' not found"):
        step.main(["--model", "nonsense"])
