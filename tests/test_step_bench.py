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
    argv = ["--steps", "5", "--top", "3", "--compare", "whole,tuned", "--rounds", "3"]
    assert step.main([*argv, "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["model"] == "tiny" and figures["device"] == "cpu"
    assert figures["compiled"] and not figures["captured"] and "direct_ms" not in figures
    assert figures["tuned"] is False, "the engine's own step is the plain one"
    profile = figures["profile"]
    assert figures["step_ms"] > 0 and profile["per_step"] > 10
    assert len(profile["top"]) == 3
    times = [row["us_per_step"] for row in profile["top"]]
    assert times == sorted(times, reverse=True) and times[0] <= profile["us_per_step"]
    # the step's own operators, not the profiler's or the harness's
    assert any(row["name"].startswith("aten::") for row in profile["top"])
    # the step compiled other ways, each timed and profiled beside it in the same run
    assert list(figures["variants"]) == ["whole", "tuned"]
    for variant in figures["variants"].values():
        assert variant["step_ms"] > 0 and variant["first_call_s"] > 0
        assert variant["profile"]["per_step"] > 10
        # alternated with the engine's own step: a ratio per round, their median the figure
        assert len(variant["ratios"]) == 3 and all(r > 0 for r in variant["ratios"])
        assert variant["ratio"] == sorted(variant["ratios"])[1]
        middle = variant["median_round"]  # the round printed beside the ratio: its two times
        assert variant["ratio"] == middle["step_ms"] / middle["own_step_ms"]
    # one graph for all layers makes fewer calls per step than one per layer
    assert figures["variants"]["whole"]["profile"]["per_step"] < profile["per_step"]
    shown = capsys.readouterr().out
    assert "decode step: tiny on CPU (float32), batch 1 × cache 4096, compiled" in shown
    assert "operators per step taking" in shown
    assert "compiled whole (all layers in one graph):" in shown
    assert "three parts, coordinate-descent tuning:" in shown
    assert "  whole: " in shown and "  tuned: " in shown and "of the time per step" in shown
    assert "median of 3 alternated rounds, " in shown


def test_bad_input_is_a_one_line_error(
    model_cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit, match=r"--steps 5000: the cache has room for \d+ more steps"):
        step.main(["--steps", "5000"])
    with pytest.raises(SystemExit):
        step.main(["--compare", "whole,fastest"])
    assert "--compare: unknown variant 'fastest': any of whole, tuned" in capsys.readouterr().err
    monkeypatch.setenv("QWEN3_JUPYTER_TUNE", "1")
    with pytest.raises(SystemExit):
        step.main(["--compare", "tuned"])
    assert "--compare tuned: $QWEN3_JUPYTER_TUNE already tunes" in capsys.readouterr().err
    monkeypatch.delenv("QWEN3_JUPYTER_TUNE")
    with pytest.raises(SystemExit, match=r"^bench step: model 'nonsense' not found"):
        step.main(["--model", "nonsense"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_line(model_cache: Path, tmp_path: Path) -> None:
    """Every bench that loads a model says it as `step` does: speed, decay and overhead printed
    a 25-line traceback through the harness."""
    from qwen3_jupyter.bench import attention, decay, overhead, speed

    with pytest.raises(SystemExit, match=r"^bench step: --device cuda: no CUDA GPU is visible"):
        step.main(["--device", "cuda"])
    with pytest.raises(SystemExit, match=r"^bench attention: --device cuda: no CUDA GPU"):
        attention.main(["--device", "cuda"])
    one_line = r"^--device cuda: no CUDA GPU is visible here; use --device cpu$"
    for name, main in (("speed", speed.main), ("decay", decay.main), ("overhead", overhead.main)):
        argv = ["--device", "cuda"] + (["--out", str(tmp_path)] if name == "decay" else [])
        with pytest.raises(SystemExit, match=one_line.replace("^", f"^bench {name}: ")):
            main(argv)


def test_a_second_gpu_is_the_one_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda:1`: a bare `torch.cuda.synchronize()` waits for the current device
    (cuda:0), not the one the step or the attention call ran on, and the clock stopped early."""
    import torch

    from qwen3_jupyter.bench import attention

    waited: list[object] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    step._sync("cuda:1")
    query = torch.zeros(1, 2, 1, 4)
    attention._timed(torch, "cuda:1", (query, query, query), {})
    assert waited == ["cuda:1"] * 3


def test_compare_gives_each_ratio_with_the_two_times_it_is_the_ratio_of() -> None:
    """The header gave the engine's step at 2.298 ms (its first timing), then "whole: 0.74 of
    the time ... 2.609 ms against 3.866 ms": neither the header's figure nor those medians
    made the ratio. Each verdict now shows its median round's two times."""
    variant = {
        "first_call_s": 9.5,
        "ratio": 0.75,
        "ratios": [0.8, 0.75, 0.7],
        "median_round": {"step_ms": 2.25, "own_step_ms": 3.0},
        "step_ms": 2.609,
        "own_step_ms": 3.866,
    }
    lines = step.compare_lines(
        {"step_ms": 2.298, "first_call_s": 20.0, "variants": {"whole": variant}}
    )
    text = "\n".join(lines)
    assert "2.298" not in text
    assert lines[1].startswith("against the engine's three parts, each variant timed in alternated")
    assert lines[2] == (
        "  whole: 0.75 of the time per step (below 1 is faster; the median of 3 alternated rounds, "
        "0.70 to 0.80): 2.250 ms per step against the engine's 3.000 ms in that round; first "
        "call 9.5 s (compiling, or loading from the compile cache)"
    )
    assert step.compare_lines({"step_ms": 2.298, "first_call_s": 20.0}) == []
