"""`python -m qwen3_jupyter.bench attention`: what a new attention shape costs, torch's backend
choice against ours (`engines/attention.py`: no cuDNN), in one process on one device.

Why: where torch prefers cuDNN attention (Hopper and Blackwell with a recent cuDNN) every new
shape builds an execution plan first. Generation meets new shapes all the time — eager decoding
a new key length per token, prefill a new prompt length per call — so the first call of each
shape is what a notebook pays. For the model's attention shape (Qwen3-1.7B: 16 query heads,
8 key/value heads, head dim 128, bfloat16 on CUDA) it times `scaled_dot_product_attention` at
`--shapes` key lengths never seen before, first with torch's choice and then with ours (on
disjoint lengths, so neither finds the other's plans), then the same lengths again (warm).
Printed: the backend each picks, and milliseconds per call, new shape vs seen shape, for a decode
step (one query) and a prefill (causal, query length = key length).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ..engines.attention import planless_attention

BACKEND_NAMES = {
    -1: "none",
    0: "math",
    1: "flash",
    2: "efficient (memory-efficient)",
    3: "cuDNN",
    4: "overrideable",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench attention", description=__doc__
    )
    parser.add_argument("--device", default=None, help="default: cuda if present, else cpu")
    parser.add_argument("--shapes", type=int, default=12, help="new key lengths per side")
    parser.add_argument("--start", type=int, default=301, help="first key length")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--json", default=None, metavar="PATH")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    lengths = [args.start + 2 * i for i in range(2 * args.shapes)]
    sides: dict[str, Callable[[], AbstractContextManager[Any]]] = {
        "torch's choice": nullcontext,
        "ours (no cuDNN)": planless_attention,
    }
    figures: dict[str, Any] = {"device": device, "dtype": str(dtype).replace("torch.", "")}
    for phase in ("decode", "prefill"):
        figures[phase] = {}
        for index, (side, context) in enumerate(sides.items()):
            mine = lengths[index :: len(sides)]  # disjoint lengths: no plan from the other side
            with context():
                figures[phase][side] = _side(torch, device, dtype, phase, mine, args)
    return figures


def _side(
    torch: Any, device: str, dtype: Any, phase: str, lengths: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    new, seen, backend = [], [], -1
    for length in lengths:
        inputs = _inputs(torch, device, dtype, phase, length, args)
        backend = int(torch._fused_sdp_choice(*inputs, **_kwargs(phase)))
        new.append(_timed(torch, device, phase, inputs))
    for length in lengths:
        inputs = _inputs(torch, device, dtype, phase, length, args)
        seen.append(_timed(torch, device, phase, inputs))
    return {
        "backend": BACKEND_NAMES.get(backend, str(backend)),
        "new_ms": statistics.median(new),
        "seen_ms": statistics.median(seen),
        "lengths": lengths,
    }


def _inputs(
    torch: Any, device: str, dtype: Any, phase: str, length: int, args: argparse.Namespace
) -> tuple[Any, Any, Any]:
    queries = 1 if phase == "decode" else length
    query = torch.randn(1, args.heads, queries, args.head_dim, device=device, dtype=dtype)
    key = torch.randn(1, args.kv_heads, length, args.head_dim, device=device, dtype=dtype)
    return query, key, torch.randn_like(key)


def _kwargs(phase: str) -> dict[str, Any]:
    return {"is_causal": phase == "prefill", "enable_gqa": True}


def _timed(torch: Any, device: str, phase: str, inputs: tuple[Any, Any, Any]) -> float:
    """Milliseconds of one attention call, the device synchronised on both sides."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    torch.nn.functional.scaled_dot_product_attention(*inputs, **_kwargs(phase))
    sync()
    return (time.perf_counter() - started) * 1000


def report(figures: dict[str, Any]) -> Iterator[str]:
    yield f"attention per new shape on {figures['device']} ({figures['dtype']}):"
    for phase in ("decode", "prefill"):
        for side, row in figures[phase].items():
            yield (
                f"  {phase:7} {side:16} picks {row['backend']:28} new shape "
                f"{row['new_ms']:8.2f} ms, seen shape {row['seen_ms']:8.2f} ms"
            )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    figures = measure(args)
    for line in report(figures):
        print(line, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
    return 0
