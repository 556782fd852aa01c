"""`python -m qwen3_jupyter.bench overhead`: `%qwen3` end to end vs a bare `model.generate`.

Both run as cells of one real kernel, timed the same way (execute request to idle, from the
client), with the same prompt, greedy decoding and exactly the same number of new tokens.
They alternate so drift (thermal, caches) hits both alike; the ratio of medians is printed.
"""

from __future__ import annotations

import argparse
import statistics

from ._cli import device_name, positive_int
from ._kernel import Kernel, load_or_exit, timed_cell

PROMPT = "Explain in detail how a Jupyter kernel keeps state between cells."

BARE_SETUP = """
import torch
from qwen3_jupyter.session import SESSION as _S
_l = _S.loaded
_text = _l.tokenizer.apply_chat_template(
    [{{"role": "user", "content": {prompt!r}}}], tokenize=False, add_generation_prompt=True,
    enable_thinking=False)
"""
BARE_CELL = """
with torch.inference_mode():
    _inputs = _l.tokenizer(_text, return_tensors="pt").to(_l.device)
    _out = _l.model.generate(**_inputs, max_new_tokens={n}, min_new_tokens={n}, do_sample=False,
                             pad_token_id=_l.tokenizer.pad_token_id)
assert _out.shape[1] - _inputs["input_ids"].shape[1] == {n}
del _out, _inputs
"""
MAGIC_CELL = "%qwen3 --greedy --no-think --ignore-eos --max-new-tokens {n} {prompt}"


def measure(model: str, tokens: int, repeats: int, device: str | None) -> dict[str, float]:
    """Median seconds of each way, in one kernel, and their ratio. A model that does not load
    (no such model, no GPU) ends the bench in one line."""
    kernel = Kernel({"PYTHONUNBUFFERED": "1"})
    try:
        device_flag = f" --device {device}" if device else ""
        timed_cell(kernel, "%load_ext qwen3_jupyter")
        print(f"  loading {model} (the full-size model is built on first use)…", flush=True)
        load_or_exit(
            kernel,
            f"%qwen3 --model {model}{device_flag} --greedy --max-new-tokens 2 warm up",
            "overhead",
        )
        timed_cell(kernel, BARE_SETUP.format(prompt=PROMPT))
        timed_cell(kernel, BARE_CELL.format(n=tokens))  # warm the bare path too
        bare: list[float] = []
        magic: list[float] = []
        try:
            for i in range(repeats):
                bare.append(timed_cell(kernel, BARE_CELL.format(n=tokens)))
                magic.append(timed_cell(kernel, MAGIC_CELL.format(n=tokens, prompt=PROMPT)))
                print(
                    f"  run {i + 1}/{repeats}: bare {bare[-1]:.3f} s, %qwen3 {magic[-1]:.3f} s",
                    flush=True,
                )
        except KeyboardInterrupt:
            raise KeyboardInterrupt(runs_so_far(model, bare, magic, repeats)) from None
    finally:
        kernel.shutdown()
    return medians(bare, magic)


def medians(bare: list[float], magic: list[float]) -> dict[str, float]:
    """Each way's median over the runs (pairs: a run is one of each), and their ratio."""
    runs = min(len(bare), len(magic))
    bare_s, magic_s = statistics.median(bare[:runs]), statistics.median(magic[:runs])
    return {"bare_s": bare_s, "magic_s": magic_s, "ratio": magic_s / bare_s}


def runs_so_far(model: str, bare: list[float], magic: list[float], repeats: int) -> str:
    """What a Ctrl-C left of a model's runs, in one line."""
    runs = min(len(bare), len(magic))
    if not runs:
        return f"{model}: no run finished"
    m = medians(bare, magic)
    return (
        f"{model}: {runs} of {repeats} runs, medians bare {m['bare_s']:.3f} s, %qwen3 "
        f"{m['magic_s']:.3f} s, ratio {m['ratio']:.3f}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench overhead", description=__doc__
    )
    parser.add_argument(
        "--models",
        default="tiny,random:Qwen3-1.7B",
        help="comma-separated, each measured in a kernel of its own (default: %(default)s)",
    )
    parser.add_argument("--tokens", type=positive_int, default=32, help="new tokens per call")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="alternating runs of each way; medians shown (5)",
    )
    parser.add_argument(
        "--device", type=device_name, default=None, help="default: cuda if present, else cpu"
    )
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if not all(models):
        parser.error(f"--models {args.models!r}: model names, comma-separated")
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        for model in models:
            print(f"{model}: {args.tokens} new tokens, {args.repeats} alternating runs", flush=True)
            rows.append((model, measure(model, args.tokens, args.repeats, args.device)))
    except KeyboardInterrupt as exc:
        done = [f"{model}: ratio {r['ratio']:.3f}" for model, r in rows]
        raise KeyboardInterrupt("; ".join(filter(None, [*done, str(exc)]))) from None
    print()
    print("| model | bare model.generate (median s) | %qwen3 end to end (median s) | ratio |")
    print("|---|---|---|---|")
    for model, r in rows:
        print(f"| {model} | {r['bare_s']:.3f} | {r['magic_s']:.3f} | {r['ratio']:.3f} |")
    print("target: ratio <= 1.05 on random:Qwen3-1.7B")
    return 0
