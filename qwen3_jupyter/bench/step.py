"""`python -m qwen3_jupyter.bench step`: where one fast decode step's time goes.

Why: on an H100 the batch-1 step of the 1.7B shape took 2.6 ms, where reading its weights and its
448 MiB cache once takes about 1.3 ms. Two causes are possible and call for different fixes: the
kernels themselves are slow (their summed device time is near the step's time), or there are too
many small ones (the sum is well below it: the rest is each kernel's start and tail). One run
tells them apart: the step's time in graph replays, and a profile of the same replays (and of the
step called without its graph) with the kernels per step, their summed device time and the
kernels that take the most. On the CPU it profiles the step's operators instead.

`--compare` also times other ways of compiling the same step, each captured the same way, in the
same process, so each costs or saves speed as a ratio measured in one run, not across runs (the
median of `--rounds` rounds that time the engine's step and the variant one after the other,
so a drift of the clock or of the machine's load falls on both):
`whole` (all layers unrolled in one graph, as before the three parts of `qwen3_step.StepParts`)
and `tuned` (the three parts with inductor's coordinate-descent tuning of its Triton kernels'
launch configurations; only GPUs have such kernels).

Runs in this process, not a kernel: the step does not touch the notebook's namespace.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..engines import qwen3_step
from ..engines.compile_setup import TUNE_ENV, TUNING, compile_settings, tuning_enabled
from ..engines.decode_steps import DecodeState, restore_call_state, snapshot_call_state
from ..engines.fast import FastEngine
from ..engines.qwen3_step import UnsupportedModel
from ..generation import GenerationOptions
from ..models import ModelChoice, ModelError, ModelHolder, pick_device, pick_dtype
from ._cli import device_name, output_file


def _sync(device: str) -> None:
    """Wait for `device` itself (`cuda:1`: the current device is cuda:0, and the step's work
    would not be waited for)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _wall_ms(step: Callable[[], Any], steps: int, device: str) -> float:
    """Milliseconds per step over `steps` back-to-back calls (one warm-up call first)."""
    step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - started) / steps * 1000


def _profile(step: Callable[[], Any], steps: int, device: str, top: int) -> dict[str, Any]:
    """Kernels (CUDA) or operators (CPU) per step, their summed time per step, and the `top`
    ones by time. A kernel's time is the device's; an operator's its own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    rows = []
    for event in prof.key_averages():
        if cuda:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            micros = float(event.self_device_time_total)
        else:
            micros = float(event.self_cpu_time_total)
            if event.key.startswith(("ProfilerStep", "## ")):
                continue
        if micros <= 0:
            continue
        rows.append((event.key, event.count / steps, micros / steps))
    rows.sort(key=lambda row: -row[2])
    total = sum(row[2] for row in rows)
    return {
        "per_step": sum(row[1] for row in rows),
        "us_per_step": total,
        "top": [
            {
                "name": name,
                "per_step": count,
                "us_per_step": us,
                "share": us / total if total else 0,
            }
            for name, count, us in rows[:top]
        ],
    }


VARIANTS = {
    "whole": "compiled whole (all layers in one graph)",
    "tuned": "three parts, coordinate-descent tuning",
}


def _variant_step(
    engine: FastEngine, state: DecodeState, variant: str
) -> tuple[Callable[[], Any], float]:
    """The greedy step of `state` compiled the `variant` way and captured like the engine's own
    (on CUDA), and the seconds its first call took (compiling, or loading from the cache).
    Its warm-up and first runs advance the buffers: the caller puts them back."""
    model, buffers = engine.loaded.model, state.buffers
    if variant == "whole":
        compiled = torch.compile(qwen3_step.decode_step, fullgraph=True, dynamic=False)

        def direct() -> Any:
            return compiled(model, buffers, True)

    else:
        parts = qwen3_step.compiled_parts(
            lambda function: torch.compile(
                function,
                fullgraph=True,
                dynamic=False,
                options=dict(TUNING),
            )
        )

        def direct() -> Any:
            return qwen3_step.decode_step(model, buffers, True, parts)

    started = time.perf_counter()
    with torch.inference_mode(), compile_settings():  # more shapes than torch's 8: ours too
        direct()
        _sync(engine.device)
    seconds = time.perf_counter() - started
    with torch.inference_mode():
        step = engine._capture(state, direct) if engine.device.startswith("cuda") else direct
    return step, seconds


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    holder = ModelHolder()
    loaded = holder.get(ModelChoice(args.model, device, dtype))
    engine = FastEngine(loaded, notify=print)
    try:
        options = GenerationOptions(greedy=True, think=False, max_new_tokens=8, ignore_eos=True)
        with torch.inference_mode():
            built = engine.generate("Where does the time go?", options)  # builds the shape
        if built.interrupted:  # the engine keeps a notebook's Ctrl-C: the bench stops on it
            raise KeyboardInterrupt
        state = next(s for s in engine.states.values() if s.batch == 1)
        replay = state.steps[0]
        direct = engine._direct(state, 0, compiled=engine.compile)
        figures: dict[str, Any] = {
            "model": args.model,
            "device": device,
            "device_name": torch.cuda.get_device_name(device)
            if device.startswith("cuda")
            else "CPU",
            "dtype": dtype,
            "cache": state.length,
            "compiled": engine.compile,
            "tuned": engine.tune,
            "captured": bool(state.graphs),
        }
        room = state.length - int(state.buffers.slot) - 1
        if args.steps >= room:
            raise SystemExit(f"--steps {args.steps}: the cache has room for {room - 1} more steps")
        saved = snapshot_call_state(state.buffers)

        def measured(run: Callable[[], Any]) -> Any:
            """`run`, then the buffers put back: every measurement starts at the same slot."""
            with torch.inference_mode():
                try:
                    return run()
                finally:
                    restore_call_state(state.buffers, saved)

        figures["step_ms"] = measured(lambda: _wall_ms(replay, args.steps, device))
        figures["profile"] = measured(lambda: _profile(replay, args.steps, device, args.top))
        if state.graphs:  # the same step without its graph: the host's share shows
            figures["direct_ms"] = measured(lambda: _wall_ms(direct, args.steps, device))
            figures["direct_profile"] = measured(
                lambda: _profile(direct, args.steps, device, args.top)
            )
        figures["first_call_s"] = sum(seconds for _, seconds in engine.compile_seconds)

        def variant_figures(variant: str) -> dict[str, Any]:
            built, first_call = measured(lambda: _variant_step(engine, state, variant))
            ratios, times, own_times = [], [], []
            for _ in range(args.rounds):  # alternated: each round's ratio under one load
                own_times.append(measured(lambda: _wall_ms(replay, args.steps, device)))
                times.append(measured(lambda: _wall_ms(built, args.steps, device)))
                ratios.append(times[-1] / own_times[-1])
            # the median round itself (the lower middle one of an even count), so its ratio
            # is its two times' ratio as printed
            middle = ratios.index(statistics.median_low(ratios))
            return {
                "first_call_s": first_call,
                "step_ms": statistics.median(times),
                "own_step_ms": statistics.median(own_times),
                "ratio": ratios[middle],
                "ratios": ratios,
                "median_round": {"step_ms": times[middle], "own_step_ms": own_times[middle]},
                "profile": measured(lambda: _profile(built, args.steps, device, args.top)),
            }

        if args.compare:
            figures["variants"] = {variant: variant_figures(variant) for variant in args.compare}
        return figures
    finally:
        engine.close()
        holder.unload()


def report(figures: dict[str, Any]) -> None:
    unit = "kernels" if figures["device"].startswith("cuda") else "operators"
    how = (
        ("compiled" if figures["compiled"] else "not compiled")
        + (", tuned" if figures.get("tuned") else "")
        + (", one CUDA graph" if figures["captured"] else "")
    )
    print(
        f"decode step: {figures['model']} on {figures['device_name']} ({figures['dtype']}), "
        f"batch 1 × cache {figures['cache']}, {how}"
    )
    variants = figures.get("variants", {})
    graph = " (graph replay)" if figures["captured"] else ""
    rows = [(f"as run{graph}", figures["step_ms"], figures["profile"])]
    if "direct_ms" in figures:
        rows.append(("called without its graph", figures["direct_ms"], figures["direct_profile"]))
    for name, figure in variants.items():
        rows.append((VARIANTS[name] + graph, figure["step_ms"], figure["profile"]))
    for label, ms, prof in rows:
        busy = prof["us_per_step"] / 1000
        print(
            f"\n{label}: {ms:.3f} ms per step ({1000 / ms:,.0f} tok/s); {prof['per_step']:.0f} "
            f"{unit} per step taking {busy:.3f} ms together ({busy / ms:.0%} of the step)"
        )
        if not prof["per_step"]:
            print(f"  (the profiler saw no {unit} here)")
        for row in prof["top"]:
            print(
                f"  {row['us_per_step']:9.1f} us {row['share']:5.1%} {row['per_step']:6.1f}x  "
                f"{row['name'][:90]}"
            )
    for line in compare_lines(figures):
        print(line)


def compare_lines(figures: dict[str, Any]) -> list[str]:
    """`--compare`'s verdicts: each variant's ratio with the two times it is the ratio of (its
    median round's), not the step's first timing above: the header gave that one (2.298 ms)
    over a ratio of 0.74 printed beside medians that made 0.67 (2.609 ms against 3.866 ms)."""
    variants = figures.get("variants", {})
    if not variants:
        return []
    lines = [
        "",
        "against the engine's three parts, each variant timed in alternated rounds with it (the "
        f"engine's first call {figures['first_call_s']:.1f} s, with torch.compile's start-up "
        "in this process):",
    ]
    for name, v in variants.items():
        ratios = v["ratios"]
        spread = f", {min(ratios):.2f} to {max(ratios):.2f}" if len(ratios) > 1 else ""
        middle = v["median_round"]
        lines.append(
            f"  {name}: {v['ratio']:.2f} of the time per step (below 1 is faster; the median of "
            f"{len(ratios)} alternated round{'s' if len(ratios) > 1 else ''}{spread}): "
            f"{middle['step_ms']:.3f} ms per step against the engine's "
            f"{middle['own_step_ms']:.3f} ms in that round; first call "
            f"{v['first_call_s']:.1f} s (compiling, or loading from the compile cache)"
        )
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench step", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", default=None, help="default: random:Qwen3-1.7B on CUDA, tiny on the CPU"
    )
    parser.add_argument(
        "--device", type=device_name, default=None, help="default: cuda if present, else cpu"
    )
    parser.add_argument(
        "--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU"
    )
    parser.add_argument("--steps", type=int, default=50, help="steps timed and profiled")
    parser.add_argument("--top", type=int, default=15, help="kernels or operators listed")
    parser.add_argument(
        "--compare",
        default="",
        metavar="VARIANTS",
        help="also time the step compiled other ways, in the same run: comma-separated, any of "
        + ", ".join(f"{name} ({what})" for name, what in VARIANTS.items()),
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="--compare's alternated rounds, each timing the engine's step then the variant "
        "(default 5; the ratio is their median)",
    )
    parser.add_argument(
        "--json", type=output_file, metavar="PATH", help="also write the raw figures here"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 1 or args.rounds < 1:
        parser.error("--steps, --top and --rounds must be at least 1")
    args.compare = [name for name in args.compare.split(",") if name]
    for name in args.compare:
        if name not in VARIANTS:
            parser.error(f"--compare: unknown variant {name!r}: any of {', '.join(VARIANTS)}")
    if "tuned" in args.compare and tuning_enabled():
        # the engine's own step is then tuned already: the variant would be the same compile
        parser.error(f"--compare tuned: ${TUNE_ENV} already tunes the step it compares against")
    try:
        if args.model is None:
            cuda = pick_device(args.device).startswith("cuda")
            args.model = "random:Qwen3-1.7B" if cuda else "tiny"
        figures = measure(args)
    except (ModelError, UnsupportedModel) as exc:
        raise SystemExit(f"bench step: {exc}") from None
    report(figures)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)
    return 0
