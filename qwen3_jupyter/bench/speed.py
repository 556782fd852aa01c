"""`python -m qwen3_jupyter.bench speed`: decode speed of every path, side by side, one device.

Four paths, in the same fresh kernel, greedy with end-of-sequence ignored so every path makes
exactly the same number of tokens:

- `%qwen3` fast path (static cache, compiled decode step, CUDA graph on GPUs);
- `%qwen3 --eager` (transformers `generate`, dynamic cache: today's path);
- bare `model.generate` with the default dynamic cache;
- bare `model.generate(..., cache_implementation="static")` (transformers compiles the forward).

Per path: tokens/s at batch 1, 4 and 16 (median of `--repeats` after one warm-up call per shape,
timed inside the kernel with the device synchronised), time to first token at batch 1, and the
first call's wall time (compiling, where a path compiles). Then the fast path's first call in
this fresh kernel and again in a second fresh kernel (the on-disk compile cache), and the batch-1
figure as a fraction of the bandwidth limit: weight bytes over a device-to-device copy bandwidth
measured in the same run. The compile cache starts empty (a temporary folder) unless `--warm-cache`.

Targets on an H100 (printed as met / not met on CUDA): fast batch 1 >= 250 tok/s and >= 0.95 x
bare static (goal 500), batch 16 >= 2,400 tok/s, second-kernel first call <= 10 s. On the CPU the
bench runs on `tiny` and prints the same columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

from ._kernel import Kernel

PROMPT = "Explain in detail how a Jupyter kernel keeps state between cells"
PATHS = ("fast", "eager", "bare", "bare-static")
LABELS = {
    "fast": "%qwen3 (fast path)",
    "eager": "%qwen3 --eager",
    "bare": "bare model.generate",
    "bare-static": 'bare generate, cache_implementation="static"',
}

SETUP = '''
import json, statistics, time
import torch
import qwen3_jupyter
from qwen3_jupyter.session import SESSION
_dev = SESSION.loaded.device
_PROMPT = {prompt!r}

def _sync():
    if _dev.startswith("cuda"):
        torch.cuda.synchronize()

def _texts(batch):
    tok = SESSION.loaded.tokenizer
    return [tok.apply_chat_template([{{"role": "user", "content": f"{{_PROMPT}} ({{i}})"}}],
            tokenize=False, add_generation_prompt=True, enable_thinking=False)
            for i in range(batch)]

class _FirstToken:
    """A generate streamer that notes when the first new token arrives."""
    def __init__(self):
        self.at, self.prompt_seen = None, False
    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
        elif self.at is None:
            self.at = time.perf_counter()
    def end(self):
        pass

def _bare(batch, tokens, static):
    loaded = SESSION.loaded
    enc = loaded.tokenizer(_texts(batch), return_tensors="pt", padding=True,
                           padding_side="left").to(loaded.device)
    first = _FirstToken() if batch == 1 else None
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    if static:
        kwargs["cache_implementation"] = "static"
    if first is not None:
        kwargs["streamer"] = first
    _sync()
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(**enc, **kwargs)
    _sync()
    seconds = time.perf_counter() - started
    made = (out.shape[1] - enc["input_ids"].shape[1]) * batch
    del out, enc
    ttft = first.at - started if first is not None and first.at is not None else None
    return {{"tok_s": made / seconds, "ttft": ttft, "seconds": seconds, "tokens": made}}

def _magic(batch, tokens, mode):
    if batch == 1:
        get_ipython().run_line_magic(
            "qwen3", f"--{{mode}} --greedy --no-think --ignore-eos --max-new-tokens {{tokens}} "
            f"{{_PROMPT}} (0)")
        r = _qwen3
        return {{"tok_s": r.tokens_per_s, "ttft": r.time_to_first_token_s,
                "seconds": r.latency_s, "tokens": r.completion_tokens}}
    prompts = [f"{{_PROMPT}} ({{i}})" for i in range(batch)]
    _sync()
    started = time.perf_counter()
    rs = qwen3_jupyter.generate_batch(prompts, batch_size=batch, decode=mode, greedy=True,
                                      think=False, ignore_eos=True, max_new_tokens=tokens,
                                      progress=False)
    _sync()
    seconds = time.perf_counter() - started
    made = sum(r.completion_tokens for r in rs)
    return {{"tok_s": made / seconds, "ttft": None, "seconds": seconds, "tokens": made}}

def _measure(path, batch, tokens):
    if path in ("fast", "eager"):
        return _magic(batch, tokens, path)
    return _bare(batch, tokens, static=path == "bare-static")

def _bandwidth():
    """Device-to-device copy bandwidth (bytes read + written per second) and weight bytes."""
    size = (512 if _dev.startswith("cuda") else 128) * 2**20
    x = torch.empty(size, dtype=torch.uint8, device=_dev)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    _sync()
    reps = 20 if _dev.startswith("cuda") else 5
    started = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    _sync()
    seconds = time.perf_counter() - started
    del x, y
    storages = {{}}
    for p in SESSION.loaded.model.parameters():
        storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return {{"bandwidth": 2 * size * reps / seconds, "weight_bytes": sum(storages.values())}}
'''

FIRST_FAST_CALL = (
    "%qwen3 --fast --greedy --no-think --ignore-eos --max-new-tokens {tokens} " + PROMPT
)


def _ok(kernel: Kernel, code: str, timeout: float = 3600) -> str:
    execution = kernel.run(code, timeout=timeout)
    if execution.status != "ok":
        raise RuntimeError(f"cell failed: {code[:60]!r}: {execution.error or execution.stderr}")
    return execution.stdout


def _value(kernel: Kernel, expression: str) -> Any:
    out = _ok(kernel, f"print(json.dumps({expression}))")
    return json.loads(out.strip().splitlines()[-1])


def _timed(kernel: Kernel, code: str) -> float:
    started = time.perf_counter()
    _ok(kernel, code)
    return time.perf_counter() - started


def _fresh_kernel(env: dict[str, str], model: str, device_flag: str) -> Kernel:
    """A kernel with the model loaded (eagerly: loading is not what is measured)."""
    kernel = Kernel(env)
    _ok(kernel, "%load_ext qwen3_jupyter")
    _ok(kernel, f"%qwen3 --eager --model {model}{device_flag} --greedy --max-new-tokens 2 load")
    return kernel


def measure(args: argparse.Namespace) -> dict[str, Any]:
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not args.warm_cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="qwen3-speed-compile-")
    device_flag = f" --device {args.device}" if args.device else ""
    batches = [int(b) for b in args.batches.split(",")]
    first_kernel = _fresh_kernel(env, args.model, device_flag)
    results: dict[str, Any] = {"first_call": {}, "paths": {}, "batches": batches}
    try:
        _ok(first_kernel, SETUP.format(prompt=PROMPT))
        results["device"] = _value(first_kernel, "_dev")
        results["device_name"] = _value(
            first_kernel,
            "torch.cuda.get_device_name() if _dev.startswith('cuda') else 'CPU'",
        )
        print(f"device: {results['device_name']} ({results['device']})", flush=True)
        results["first_call"]["fast, fresh kernel"] = _timed(
            first_kernel, FIRST_FAST_CALL.format(tokens=args.tokens)
        )
        print(
            f"fast path, first call in a fresh kernel: "
            f"{results['first_call']['fast, fresh kernel']:.1f} s",
            flush=True,
        )
        results.update(_value(first_kernel, "_bandwidth()"))
        for path in args.paths.split(","):
            results["paths"][path] = _measure_path(first_kernel, path, batches, args)
    finally:
        first_kernel.shutdown()
    second_kernel = _fresh_kernel(env, args.model, device_flag)
    try:
        results["first_call"]["fast, second fresh kernel"] = _timed(
            second_kernel, FIRST_FAST_CALL.format(tokens=args.tokens)
        )
    finally:
        second_kernel.shutdown()
    return results


def _measure_path(
    kernel: Kernel, path: str, batches: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """One path: a timed first call per batch size, then the median of `repeats`."""
    figures: dict[str, Any] = {}
    for batch in batches:
        tokens = args.tokens if batch == 1 else args.batch_tokens
        call = f"_measure({path!r}, {batch}, {tokens})"
        first = _timed(kernel, f"_first = {call}")
        runs = [_value(kernel, call) for _ in range(args.repeats)]
        tok_s = statistics.median(r["tok_s"] for r in runs)
        ttfts = [r["ttft"] for r in runs if r["ttft"] is not None]
        figures[str(batch)] = {
            "tok_s": tok_s,
            "ttft": statistics.median(ttfts) if ttfts else None,
            "first_call_s": first,
            "runs": runs,
        }
        print(
            f"  {LABELS[path]:48} batch {batch:>2}: {tok_s:8.1f} tok/s (first call {first:.1f} s)",
            flush=True,
        )
    return figures


def report(results: dict[str, Any]) -> list[str]:
    """The table and the summary lines (targets judged only on CUDA)."""
    batches = results["batches"]
    head = " | ".join(f"batch {b} tok/s" for b in batches)
    lines = [
        f"| path | {head} | first token (batch 1) | first call (batch 1) |",
        "|---|" + "---|" * (len(batches) + 2),
    ]
    for path, figures in results["paths"].items():
        cells = [f"{figures[str(b)]['tok_s']:,.1f}" for b in batches]
        ttft = figures[str(batches[0])]["ttft"]
        ttft_text = f"{ttft * 1000:.0f} ms" if ttft is not None else "–"
        first = figures[str(batches[0])]["first_call_s"]
        lines.append(f"| {LABELS[path]} | {' | '.join(cells)} | {ttft_text} | {first:.1f} s |")
    limit = results["bandwidth"] / results["weight_bytes"]
    lines.append("")
    lines.append(
        f"bandwidth (device-to-device copy): {results['bandwidth'] / 1e9:,.0f} GB/s; weights "
        f"{results['weight_bytes'] / 1e9:.2f} GB -> limit {limit:,.0f} tok/s at batch 1"
    )
    for name, seconds in results["first_call"].items():
        lines.append(f"first fast call ({name}): {seconds:.1f} s")
    paths = results["paths"]
    if "fast" in paths and "1" in paths["fast"]:
        fast1 = paths["fast"]["1"]["tok_s"]
        lines.append(f"fast batch 1: {fast1:,.1f} tok/s = {fast1 / limit:.2f} of the limit")
        if "bare-static" in paths:
            ratio = fast1 / paths["bare-static"]["1"]["tok_s"]
            lines.append(f"fast / bare static at batch 1: {ratio:.2f}")
        if "eager" in paths:
            lines.append(f"fast / eager at batch 1: {fast1 / paths['eager']['1']['tok_s']:.1f}x")
    if str(results.get("device", "")).startswith("cuda"):
        lines.extend(_targets(results))
    else:
        lines.append("targets are for an H100 and are not judged on the CPU")
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    paths, lines = results["paths"], ["", "targets (H100):"]

    def judge(label: str, met: bool) -> None:
        lines.append(f"- {label}: {'met' if met else 'NOT met'}")

    fast = paths.get("fast", {})
    if "1" in fast:
        judge(f"batch 1 >= 250 tok/s ({fast['1']['tok_s']:.0f})", fast["1"]["tok_s"] >= 250)
        if "bare-static" in paths:
            ratio = fast["1"]["tok_s"] / paths["bare-static"]["1"]["tok_s"]
            judge(f"batch 1 >= 0.95 x bare static ({ratio:.2f})", ratio >= 0.95)
        judge(f"goal batch 1 >= 500 tok/s ({fast['1']['tok_s']:.0f})", fast["1"]["tok_s"] >= 500)
    if "16" in fast:
        judge(f"batch 16 >= 2,400 tok/s ({fast['16']['tok_s']:.0f})", fast["16"]["tok_s"] >= 2400)
    second = results["first_call"].get("fast, second fresh kernel")
    if second is not None:
        judge(f"second-kernel first call <= 10 s ({second:.1f} s)", second <= 10)
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench speed", description=__doc__
    )
    parser.add_argument("--model", default=None, help="default: random:Qwen3-1.7B on CUDA, tiny")
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens at batch 1")
    parser.add_argument("--batch-tokens", type=int, default=64, help="new tokens per row, batches")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default=",".join(PATHS), help=f"any of {', '.join(PATHS)}")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the project's compile cache instead of an empty temporary one",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.model is None:
        import torch

        cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
        args.model = "random:Qwen3-1.7B" if cuda else "tiny"
    print(
        f"speed bench: {args.model}, {args.tokens} tokens at batch 1, {args.batch_tokens} per "
        f"row at batches {args.batches}, {args.repeats} repeats, {os.cpu_count()} CPUs",
        flush=True,
    )
    results = measure(args)
    results["model"] = args.model
    print()
    for line in report(results):
        print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0
