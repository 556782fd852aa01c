"""`bench speed`'s report: the table and the H100 targets from figures a run produced, including
a run cut short by `--time-limit` (a lent GPU's clock), where missing cells must read "–" and no
target may be judged on a figure that was never measured."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from qwen3_jupyter.bench._kernel import Kernel
from qwen3_jupyter.bench.speed import main, report


def figure(tok_s: float, ttft: float | None = None, decode: float | None = None) -> dict[str, Any]:
    return {"tok_s": tok_s, "ttft": ttft, "first_call_s": 1.5, "decode_tok_s": decode, "runs": []}


def results(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "device": "cuda:0",
        "model": "random:Qwen3-1.7B",
        "tokens": 128,
        "batch_tokens": 64,
        "batches": [1, 4, 16],
        "bandwidth": 3.0e12,
        "weight_bytes": 3.0e9,
        "first_call": {"fast, fresh kernel": 40.0, "fast, second fresh kernel": 6.0},
        "first_call_how": {"fast, second fresh kernel": "loaded from the compile cache"},
        "paths": {
            "fast": {"1": figure(600.0, 0.004), "4": figure(2000.0), "16": figure(2600.0)},
            "bare-static": {"1": figure(240.0, 0.02), "4": figure(750.0), "16": figure(2467.0)},
        },
        "not_measured": [],
    }
    base.update(overrides)
    return base


def test_a_full_cuda_run_judges_every_target() -> None:
    text = "\n".join(report(results(device_name="NVIDIA H200")))
    assert "targets (issue 10 sets them for an H100; measured here on NVIDIA H200):" in text
    in_bf16 = "\n".join(report(results(device_name="NVIDIA H200", dtype="bfloat16")))
    assert "measured here on NVIDIA H200 in bfloat16):" in in_bf16
    assert "weights 3.00 GB in bfloat16 -> limit 1,000 tok/s at batch 1" in in_bf16
    tuned = "\n".join(report(results(device_name="NVIDIA H200", tuned=True)))
    assert "measured here on NVIDIA H200, the step tuned by $QWEN3_JUPYTER_TUNE):" in tuned
    # the fast path's first call is the fresh kernel's (the table's own run found it built)
    assert "| %qwen3 (fast path) | 600.0 | 2,000.0 | 2,600.0 | 4 ms | 40.0 s |" in text
    assert "limit 1,000 tok/s at batch 1" in text
    assert "fast batch 1: 600.0 tok/s = 0.60 of the limit" in text
    assert "fast / bare static at batch 1: 2.50" in text
    assert "- batch 1 >= 250 tok/s (600): met" in text
    assert "- batch 1 >= 0.95 x bare static (2.50): met" in text
    assert "- goal batch 1 >= 500 tok/s (600): met" in text
    assert "- batch 16 >= 2,400 tok/s, wall clock per call (2600): met" in text
    assert "- second-kernel first call <= 10 s (6.0 s): met" in text
    assert "(fast, second fresh kernel): 6.0 s (loaded from the compile cache)" in text


def test_targets_not_met_say_so() -> None:
    slow = results()
    slow["paths"]["fast"]["1"] = figure(200.0)
    slow["first_call"]["fast, second fresh kernel"] = 12.0
    text = "\n".join(report(slow))
    assert "- batch 1 >= 250 tok/s (200): NOT met" in text
    assert "- batch 1 >= 0.95 x bare static (0.83): NOT met" in text
    assert "- second-kernel first call <= 10 s (12.0 s): NOT met" in text


def test_a_run_cut_short_shows_dashes_and_judges_only_what_it_measured() -> None:
    cut = results(not_measured=["fast at batch 16", "bare-static at batch 16"])
    del cut["paths"]["fast"]["16"], cut["paths"]["bare-static"]["16"]
    cut["paths"]["bare-static"].pop("1")
    text = "\n".join(report(cut))
    assert "| %qwen3 (fast path) | 600.0 | 2,000.0 | – | 4 ms | 40.0 s |" in text
    assert '| bare generate, cache_implementation="static" | – | 750.0 | – | – | – |' in text
    assert "not measured (out of time): fast at batch 16, bare-static at batch 16" in text
    assert "batch 16 >= 2,400" not in text
    assert "bare static" not in text.split("targets (issue 10 sets them for an H100")[1]
    assert "- batch 1 >= 250 tok/s (600): met" in text


def test_targets_are_not_judged_on_the_cpu() -> None:
    text = "\n".join(report(results(device="cpu")))
    assert "targets are for an H100 and are not judged on the CPU" in text
    assert "targets (issue 10" not in text


def test_setup_excluded_batch_figures_are_shown_and_judged_beside_the_wall_clock() -> None:
    setup_heavy = results()
    setup_heavy["paths"]["fast"]["4"] = figure(1200.0, decode=1900.0)
    setup_heavy["paths"]["fast"]["16"] = figure(1800.0, decode=3100.0)
    text = "\n".join(report(setup_heavy))
    assert (
        "fast path batches without building the decode step (each generate_batch call compiles "
        "or loads and captures its batch shape's step, then gives it back; allocating the cache "
        "and the prefill stay in): batch 4 1,900.0 tok/s, batch 16 3,100.0 tok/s"
    ) in text, "the per-call setup was said left out, but only building the step is"
    assert "- batch 16 >= 2,400 tok/s, wall clock per call (1800): NOT met" in text
    assert "- batch 16 >= 2,400 tok/s, building the step excluded (3100): met" in text


def test_a_failed_path_is_named_and_the_others_are_still_reported() -> None:
    broken = results(failed={"bare-static at batch 1": "cell failed: InductorError: no cc"})
    broken["paths"]["bare-static"].pop("1")
    text = "\n".join(report(broken))
    assert '| bare generate, cache_implementation="static" | failed | 750.0 |' in text
    assert "failed: bare-static at batch 1: cell failed: InductorError: no cc" in text
    assert "- batch 1 >= 250 tok/s (600): met" in text


def test_the_step_alone_says_how_much_of_it_whole_calls_keep() -> None:
    text = "\n".join(report(results(step_ms=1.25)))
    assert "one step alone (replayed 200 times, no host loop): 1.250 ms = 800 tok/s" in text
    assert "whole calls (prefill, host loop) keep 0.75 of it" in text
    assert "one step alone" not in "\n".join(report(results()))


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--paths", "fast,nonsense"], "unknown path 'nonsense': any of fast, eager, bare"),
        (["--batches", "1,x"], "--batches '1,x': batch sizes of 1 or more"),
        (["--batches", "0"], "--batches '0': batch sizes of 1 or more"),
        (["--repeats", "0"], "argument --repeats: '0': a whole number of 1 or more"),
        (["--tokens", "0"], "argument --tokens: '0': a whole number of 1 or more"),
        (["--batch-tokens", "x"], "argument --batch-tokens: 'x': a whole number of 1 or more"),
    ],
)
def test_bad_arguments_are_one_line_before_any_kernel_starts(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert said in capsys.readouterr().err


def test_a_first_call_says_where_its_seconds_went() -> None:
    split = results(
        first_call_parts={
            "fast, second fresh kernel": {
                "compile_s": 3.5,
                "setup_s": 4.25,
                "timers": [["_compile.compile_inner", 3.4], ["bytecode_tracing", 0.52]],
            }
        }
    )
    text = "\n".join(report(split))
    assert (
        "first fast call (fast, second fresh kernel): 6.0 s (loaded from the compile cache): "
        "torch.compile 3.5 s, capturing and the rest of the step's set-up 0.8 s, the rest "
        "(engine, prefill, decode, the kernel's round trip) 1.8 s"
    ) in text
    assert (
        "(engine, prefill, decode, the kernel's round trip) 1.8 s\n"
        "  torch.compile's timers (nested ones overlap): _compile.compile_inner 3.40 s, "
        "bytecode_tracing 0.52 s\n"
    ) in text
    assert "first fast call (fast, fresh kernel): 40.0 s\n" in text + "\n"


def test_a_first_call_is_shown_with_the_load_before_it() -> None:
    text = "\n".join(report(results(load_s={"fast, second fresh kernel": 3.25})))
    assert (
        "first fast call (fast, second fresh kernel): 6.0 s (loaded from the compile cache)\n"
        "  before it, loading the model (and 2 eager tokens) took 3.2 s: a new kernel's first "
        "fast answer, loading included, about 9.2 s"
    ) in text
    assert "before it" not in "\n".join(report(results()))


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"model": "tiny"}, "tiny"),
        ({"tokens": 8}, "8 tokens at batch 1"),
        ({"batch_tokens": 16}, "16 tokens per row"),
    ],
)
def test_targets_are_judged_only_for_the_configuration_they_are_for(
    overrides: dict[str, Any], why: str
) -> None:
    text = "\n".join(report(results(**overrides)))
    assert "targets not judged (they are for Qwen3-1.7B at 128/64 tokens)" in text, why
    assert not _judged(text), why
    for model in ("random:qwen3-1.7b", "Qwen/Qwen3-1.7B"):  # gpu-check's default, the real one
        assert "- batch 1 >= 250 tok/s (600): met" in "\n".join(report(results(model=model)))


def test_a_header_names_the_batch_its_first_call_columns_show() -> None:
    """`--batches 4,16` (no batch 1): the columns are batch 4's, not the fresh kernel's batch-1
    first call under a "batch 4" header."""
    no_one = results(batches=[4, 16])
    del no_one["paths"]["fast"]["1"], no_one["paths"]["bare-static"]["1"]
    text = "\n".join(report(no_one))
    assert "| first token (batch 4) | first call (batch 4) |" in text
    assert "| %qwen3 (fast path) | 2,000.0 | 2,600.0 | – | 1.5 s |" in text
    four_first = "\n".join(report(results(batches=[4, 1])))  # gpu-check's 'rest' order
    assert "| first token (batch 1) | first call (batch 1) |" in four_first
    assert "| %qwen3 (fast path) | 2,000.0 | 600.0 | 4 ms | 40.0 s |" in four_first


def _judged(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.endswith((": met", ": NOT met"))]


def _sliding_window_copy(model_cache: Path, folder: Path) -> Path:
    """The tiny checkpoint with a sliding-window layer: a model the fast path refuses (it has
    no sliding-window attention), so the kernel decodes `%qwen3 --fast` eagerly with a notice —
    the honest way to make the fast path fall back on a CPU."""
    from qwen3_jupyter.embedded import ensure_built

    shutil.copytree(ensure_built("tiny"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        layer_types=["full_attention", "sliding_attention"],
        use_sliding_window=True,
        sliding_window=4096,
        max_window_layers=1,
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_fast_path_that_decoded_eagerly_is_a_failed_row_not_a_figure(
    model_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _sliding_window_copy(model_cache, tmp_path / "sliding")
    out = tmp_path / "speed.json"
    argv = ["--model", str(model), "--device", "cpu", "--tokens", "4", "--batch-tokens", "4"]
    argv += ["--batches", "1,2", "--repeats", "1", "--paths", "fast,eager", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    notice = "fast decode unavailable (the fast path does not implement sliding-window layers)"
    assert figures["paths"]["fast"] == {}, "eager figures reported as the fast path's"
    for batch in (1, 2):
        failed = figures["failed"][f"fast at batch {batch}"]
        assert failed.startswith("decoded by the eager engine, not the fast path: " + notice)
    assert set(figures["paths"]["eager"]) == {"1", "2"}, "the other path is still measured"
    for how in figures["first_call_how"].values():
        assert how.startswith(f"fast path off: {notice}"), how
    assert "| %qwen3 (fast path) | failed | failed | – | – |" in printed
    assert "(nothing compiled)" not in printed
    assert f"s (fast path off: {notice}" in printed.split("first fast call (fast, second")[1]
    # The same run on CUDA in the targets' configuration: nothing of the fast path is judged.
    figures.update(device="cuda:0", model="random:Qwen3-1.7B", tokens=128, batch_tokens=64)
    text = "\n".join(report(figures))
    assert "- second-kernel first call: not judged (fast path off: " + notice in text
    assert not _judged(text)


def test_a_load_that_fails_is_one_line_and_leaves_no_kernel_or_cache(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No such model (or no GPU: the same load cell) ends the bench in one line, as `bench
    step` does; the kernel it started and the temporary compile cache go with it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "nosuch", "--device", "cpu"])
    said = str(exit_info.value.code)
    assert said.startswith("bench speed: model 'nosuch' not found") and "\n" not in said
    assert list(tmp_path.iterdir()) == [], "a kernel folder or the compile cache was left"


def test_the_kernel_side_waits_for_the_models_own_gpu(kernel_env: dict[str, str]) -> None:
    """`--device cuda:1`: the timing code in the kernel waited for the current device (cuda:0)
    and named its GPU; it must use the model's. (torch's calls are recorded: no GPU here.)"""
    from qwen3_jupyter.bench.speed import DEVICE_NAME, PROMPT, SETUP, _ok

    kernel = Kernel(kernel_env)
    try:
        _ok(kernel, "%load_ext qwen3_jupyter")
        _ok(kernel, "%qwen3 --eager --model tiny --device cpu --max-new-tokens 2 load")
        _ok(kernel, SETUP.format(prompt=PROMPT))
        _ok(
            kernel,
            "_asked = []\ntorch.cuda.synchronize = lambda device=None: _asked.append(device)",
        )
        _ok(kernel, "torch.cuda.get_device_name = lambda device=None: _asked.append(device)")
        _ok(kernel, f"_dev = 'cuda:1'\n_sync()\n{DEVICE_NAME}")
        assert kernel.value("_asked") == ["cuda:1", "cuda:1"]
    finally:
        kernel.shutdown()


def test_help_keeps_the_bullets_and_says_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    said = {}
    for bench in ("speed", "step", "overhead", "attention"):
        with pytest.raises(SystemExit):
            importlib.import_module(f"qwen3_jupyter.bench.{bench}").main(["--help"])
        said[bench] = capsys.readouterr().out
    assert "\n- `%qwen3` fast path (static cache," in said["speed"], "bullets run together"
    words = {bench: " ".join(text.split()) for bench, text in said.items()}
    assert "random:Qwen3-1.7B on CUDA, tiny on the CPU" in words["speed"]
    assert "--batches BATCHES batch sizes" in words["speed"]
    assert "--repeats REPEATS timed calls" in words["speed"]
    assert "tiny on the CPU" in words["step"] and "float32 on the CPU" in words["step"]
    assert "--models MODELS comma-separated" in words["overhead"]
    for option in ("--heads HEADS", "--kv-heads KV_HEADS", "--head-dim HEAD_DIM", "--json PATH"):
        assert re.search(rf"{option} +[a-z]", words["attention"]), option


def test_a_run_removes_its_compile_cache_and_says_its_time_limit_as_given(
    model_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The temporary compile cache each run made was left behind (one folder per run); and
    `--time-limit 0.5` was printed as "0 s". The kernels inherit $QWEN3_JUPYTER_DTYPE, and the
    run says the dtype it measured (it printed none: a CPU table in bf16 read as float32's)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("QWEN3_JUPYTER_DTYPE", "bf16")
    argv = ["--model", "tiny", "--device", "cpu", "--skip-first-calls", "--time-limit", "0.5"]
    assert main([*argv, "--paths", "eager", "--batches", "1", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "device: CPU (cpu), bfloat16\n" in printed, printed
    assert "out of time (--time-limit 0.5 s): not measured: eager at batch 1" in printed
    assert list(tmp_path.iterdir()) == [], "the compile cache (or a kernel's folder) was left"


def test_a_time_limited_run_shows_the_fast_first_call_it_measured() -> None:
    """`--time-limit` left batch 1 out after the fresh kernel's first call: the table read "–"
    under "first call (batch 1)" with the call measured and printed below it."""
    cut = results(not_measured=["first call (fast, second fresh kernel)", "fast at batch 1"])
    cut["first_call"].pop("fast, second fresh kernel")
    cut["paths"]["fast"].pop("1")
    text = "\n".join(report(cut))
    assert "| %qwen3 (fast path) | – | 2,000.0 | 2,600.0 | – | 40.0 s |" in text
    assert "first call: a path's first call at that batch size in the measuring kernel" in text


def test_the_second_kernel_is_not_started_after_the_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--time-limit` says "start no new measurement after this long", and the second fresh
    kernel was started, loaded and timed after it anyway."""
    from qwen3_jupyter.bench import speed

    def started(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a kernel started after the time limit")

    monkeypatch.setattr(speed, "_fresh_kernel", started)
    monkeypatch.setattr(speed, "_first_call", started)
    asked: list[str] = []
    timed: list[str] = []

    def out_of_time_after(calls: int) -> Callable[[str], bool]:
        def out_of_time(what: str) -> bool:
            asked.append(what)
            return len(timed) >= calls

        return out_of_time

    args = speed.argparse.Namespace(tokens=8)
    figures = results(first_call={})
    speed._first_calls(figures, fake_kernel(), args, {}, "", out_of_time_after(0))
    assert asked == ["first call (fast, fresh kernel)"]
    monkeypatch.setattr(speed, "_first_call", lambda results, name, *rest: timed.append(name))
    asked.clear()
    speed._first_calls(figures, fake_kernel(), args, {}, "", out_of_time_after(1))
    assert timed == ["fast, fresh kernel"]
    assert asked == ["first call (fast, fresh kernel)", "first call (fast, second fresh kernel)"]


class FakeKernel:
    """Answers `_measure_one`'s cells: the warm-up call prints nothing, each timed run its
    figures."""

    def run(self, code: str, timeout: float = 0) -> Any:
        said = {"tok_s": 100.0, "ttft": 0.01, "seconds": 0.1, "tokens": 8, "engine": "fast"}
        stdout = json.dumps(said) + "\n" if code.startswith("print(") else ""
        return type("Ran", (), {"status": "ok", "stdout": stdout})()


def fake_kernel() -> Kernel:
    return cast(Kernel, FakeKernel())


def test_the_fast_first_call_at_batch_1_has_one_value_everywhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One run showed 1.3 s (progress line), 17.4 s (table) and 1.285 (JSON) as the fast
    path's batch-1 first call: the table's was the fresh kernel's first call, which built the
    shape; the others were the call after it."""
    from qwen3_jupyter.bench import speed

    args = speed.argparse.Namespace(tokens=8, batch_tokens=8, repeats=2)
    built = results(first_call={"fast, fresh kernel": 17.4})
    figures = speed._measure_one(fake_kernel(), "fast", 1, args, built)
    assert figures["first_call_s"] == 17.4 and figures["warm_up_s"] < 1
    assert "(first call 17.4 s: the fresh kernel's, above; warm-up here" in capsys.readouterr().out
    built["paths"]["fast"]["1"] = figures
    assert "| %qwen3 (fast path) | 100.0 | 2,000.0 | 2,600.0 | 10 ms | 17.4 s |" in "\n".join(
        report(built)
    )
    eager = speed._measure_one(fake_kernel(), "eager", 1, args, built)
    assert eager["first_call_s"] == eager["warm_up_s"], "a path's own first call elsewhere"
    assert "(first call 0.0 s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("batches", "skip", "said"),
    [
        ([1, 2], False, "tiny, 16 tokens at batch 1, 8 per row at batch 2, 3 repeats, 2 CPUs"),
        ([1, 4, 16], False, "16 tokens at batch 1, 8 per row at batches 4,16, 3 repeats"),
        ([1], True, "tiny, 16 tokens at batch 1, 3 repeats"),
        ([4, 16], True, "tiny, 8 per row at batches 4,16, 3 repeats"),
    ],
)
def test_the_first_line_says_the_tokens_each_batch_gets(
    batches: list[int], skip: bool, said: str
) -> None:
    """It said "8 per row at batches 1,2" where batch 1 makes `--tokens` (16)."""
    from qwen3_jupyter.bench import speed

    args = speed.argparse.Namespace(
        model="tiny",
        tokens=16,
        batch_tokens=8,
        batch_sizes=batches,
        repeats=3,
        skip_first_calls=skip,
    )
    assert said in speed.run_line(args, 2)


def test_an_interrupted_run_says_what_it_measured() -> None:
    from qwen3_jupyter.bench.speed import measured_so_far

    assert measured_so_far(results(first_call={}, paths={"fast": {}})) == "nothing measured yet"
    said = measured_so_far(results(paths={"fast": {"1": figure(612.34)}}))
    assert said == (
        "measured: first call (fast, fresh kernel) 40.0 s, first call (fast, second fresh "
        "kernel) 6.0 s, fast batch 1 612.3 tok/s"
    )
