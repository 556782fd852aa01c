"""`python -m qwen3_jupyter.bench step`: where one fast decode step's time goes.

Why: on an H100 the batch-1 step of the 1.7B shape took 2.6 ms, where reading its weights and its
448 MiB cache once takes about 1.3 ms. Two causes are possible and call for different fixes: the
kernels themselves are slow (their summed device time is near the step's time), or there are too
many small ones (the sum is well below it: the rest is each kernel's start and tail). One run
tells them apart: the step's time in graph replays, and a profile of the same replays (and of the
step called without its graph) with the kernels per step, their summed device time and the
kernels that take the most. On the CPU it profiles the step's operators instead.

`--whole` also times the step compiled as one function (all layers unrolled in one graph, as it
was compiled before the three parts of `qwen3_step.StepParts`), captured the same way, in the
same process: whether compiling one layer for all of them costs speed is then a ratio measured
in one run, not a comparison across runs.

Runs in this process, not a kernel: the step does not touch the notebook's namespace.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from ..engines import qwen3_step
from ..engines.fast import DecodeState, FastEngine, _restore, _snapshot
from ..engines.qwen3_step import UnsupportedModel
from ..generation import GenerationOptions
from ..models import ModelChoice, ModelError, ModelHolder, pick_device, pick_dtype


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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


def _whole_step(engine: FastEngine, state: DecodeState) -> tuple[Callable[[], Any], float]:
    """The greedy step of `state` compiled as one function and captured like the engine's own
    (on CUDA), and the seconds its first call took (compiling, or loading from the cache).
    Its warm-up and first runs advance the buffers: the caller puts them back."""
    model, buffers = engine.loaded.model, state.buffers
    compiled = torch.compile(qwen3_step.decode_step, fullgraph=True, dynamic=False)

    def direct() -> Any:
        return compiled(model, buffers, True)

    started = time.perf_counter()
    with torch.inference_mode():
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
            engine.generate("Where does the time go?", options)  # builds (and captures) the shape
        state = next(s for s in engine.states.values() if s.batch == 1)
        replay = state.steps[0]
        direct = engine._direct(state, 0, compiled=engine.compile)
        figures: dict[str, Any] = {
            "model": args.model,
            "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "CPU",
            "dtype": dtype,
            "cache": state.length,
            "compiled": engine.compile,
            "captured": bool(state.graphs),
        }
        room = state.length - int(state.buffers.slot) - 1
        if args.steps >= room:
            raise SystemExit(f"--steps {args.steps}: the cache has room for {room - 1} more steps")
        saved = _snapshot(state.buffers)

        def measured(run: Callable[[], Any]) -> Any:
            """`run`, then the buffers put back: every measurement starts at the same slot."""
            with torch.inference_mode():
                try:
                    return run()
                finally:
                    _restore(state.buffers, saved)

        figures["step_ms"] = measured(lambda: _wall_ms(replay, args.steps, device))
        figures["profile"] = measured(lambda: _profile(replay, args.steps, device, args.top))
        if state.graphs:  # the same step without its graph: the host's share shows
            figures["direct_ms"] = measured(lambda: _wall_ms(direct, args.steps, device))
            figures["direct_profile"] = measured(
                lambda: _profile(direct, args.steps, device, args.top)
            )
        if args.whole:
            figures["parts_compile_s"] = sum(seconds for _, seconds in engine.compile_seconds)
            whole, figures["whole_compile_s"] = measured(lambda: _whole_step(engine, state))
            figures["whole_ms"] = measured(lambda: _wall_ms(whole, args.steps, device))
            figures["whole_profile"] = measured(
                lambda: _profile(whole, args.steps, device, args.top)
            )
        return figures
    finally:
        engine.close()
        holder.unload()


def report(figures: dict[str, Any]) -> None:
    unit = "kernels" if figures["device"].startswith("cuda") else "operators"
    how = ("compiled" if figures["compiled"] else "not compiled") + (
        ", one CUDA graph" if figures["captured"] else ""
    )
    print(
        f"decode step: {figures['model']} on {figures['device_name']} ({figures['dtype']}), "
        f"batch 1 × cache {figures['cache']}, {how}"
    )
    for label, wall, profile in (
        ("as run (graph replay)" if figures["captured"] else "as run", "step_ms", "profile"),
        ("called without its graph", "direct_ms", "direct_profile"),
        ("compiled whole (all layers in one graph)", "whole_ms", "whole_profile"),
    ):
        if wall not in figures:
            continue
        ms, prof = figures[wall], figures[profile]
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
    if "whole_ms" in figures:
        print(
            f"\nthree parts / whole: {figures['step_ms'] / figures['whole_ms']:.2f} of the whole "
            f"step's time per step (lower is faster); first call {figures['parts_compile_s']:.1f}"
            f" s in three parts (torch.compile's start-up in this process included), "
            f"{figures['whole_compile_s']:.1f} s whole (compiling, or loading from the compile "
            "cache)"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench step", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default=None, help="default: random:Qwen3-1.7B on CUDA, tiny")
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32")
    parser.add_argument("--steps", type=int, default=50, help="steps timed and profiled")
    parser.add_argument("--top", type=int, default=15, help="kernels or operators listed")
    parser.add_argument(
        "--whole",
        action="store_true",
        help="also time the step compiled whole (one graph of all layers), in the same run",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        parser.error("--steps and --top must be at least 1")
    if args.model is None:
        cuda = pick_device(args.device).startswith("cuda")
        args.model = "random:Qwen3-1.7B" if cuda else "tiny"
    try:
        figures = measure(args)
    except (ModelError, UnsupportedModel) as exc:
        raise SystemExit(f"bench step: {exc}") from None
    report(figures)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=1)
    return 0
