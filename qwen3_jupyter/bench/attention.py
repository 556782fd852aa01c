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
step (one query) and a prefill (causal, query length = key length), each in the two forms
transformers' SDPA attention uses: `grouped` (8 key/value heads, `enable_gqa`: no mask, the
common case of one prompt) and `repeated` (keys and values repeated to the 16 query heads, with a
mask: a padded batch) — the backends torch may pick differ between them.
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
from ._cli import device_name, output_file, positive_int

BACKEND_NAMES = {
    -1: "none",
    0: "math",
    1: "flash",
    2: "efficient (memory-efficient)",
    3: "cuDNN",
    4: "overrideable",
}
PHASES = ("decode", "prefill")
FORMS = ("grouped", "repeated")
"""transformers' two SDPA forms: key/value heads grouped in the kernel (no mask), or repeated
to the query heads (with a mask)."""
SIDES = ("torch's choice", "ours (no cuDNN)")
MIN_START = len(FORMS) * len(SIDES) + 1
"""The lowest `--start`: each (form, side) run warms up at a key length below it, the last one
at `--start` - 4, which must be 1 or more."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench attention", description=__doc__
    )
    parser.add_argument(
        "--device", type=device_name, default=None, help="default: cuda if present, else cpu"
    )
    parser.add_argument("--shapes", type=positive_int, default=12, help="new key lengths per side")
    parser.add_argument(
        "--start",
        type=positive_int,
        default=301,
        help=f"first key length, {MIN_START} or more (the warm-up calls use the ones below it)",
    )
    parser.add_argument(
        "--heads", type=positive_int, default=16, help="query heads (Qwen3-1.7B: 16)"
    )
    parser.add_argument(
        "--kv-heads", type=positive_int, default=8, help="key/value heads (Qwen3-1.7B: 8)"
    )
    parser.add_argument(
        "--head-dim", type=positive_int, default=128, help="head dim (Qwen3-1.7B: 128)"
    )
    parser.add_argument(
        "--json", type=output_file, default=None, metavar="PATH", help="also write the figures here"
    )
    args = parser.parse_args(argv)
    if args.start < MIN_START:
        parser.error(
            f"--start {args.start}: {MIN_START} or more (one warm-up call per form and side runs "
            "at a key length of its own below it)"
        )
    if args.heads % args.kv_heads:
        parser.error(
            f"--kv-heads {args.kv_heads} does not divide --heads {args.heads}: each key/value "
            "head serves a whole group of query heads"
        )
    return args


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    sides: dict[str, Callable[[], AbstractContextManager[Any]]] = dict(
        zip(SIDES, (nullcontext, planless_attention), strict=True)
    )
    runs = [(form, side) for form in FORMS for side in sides]
    lengths = [args.start + 2 * i for i in range(len(runs) * args.shapes)]
    figures: dict[str, Any] = {"device": device, "dtype": str(dtype).replace("torch.", "")}
    for phase in PHASES:
        figures[phase] = {form: {} for form in FORMS}
        for index, (form, side) in enumerate(runs):
            mine = lengths[index :: len(runs)]  # disjoint lengths: no plan from another run
            with sides[side]():
                shape = _Shape(phase, form, device, dtype, args)
                # One call at a length of its own first: loading the backend's kernels (cuDNN's
                # library, say) is paid once per process, not per shape.
                warm_up = args.start - 1 - index
                _timed(torch, device, shape.inputs(torch, warm_up), shape.kwargs(torch, warm_up))
                figures[phase][form][side] = _side(torch, shape, mine)
    return figures


class _Shape:
    """One attention call's form, at any key length: its inputs and keyword arguments."""

    def __init__(
        self, phase: str, form: str, device: str, dtype: Any, args: argparse.Namespace
    ) -> None:
        self.phase, self.form, self.device, self.dtype = phase, form, device, dtype
        self.heads, self.head_dim = args.heads, args.head_dim
        self.kv_heads = args.kv_heads if form == "grouped" else args.heads

    def inputs(self, torch: Any, length: int) -> tuple[Any, Any, Any]:
        queries = 1 if self.phase == "decode" else length
        size = (1, self.heads, queries, self.head_dim)
        query = torch.randn(size, device=self.device, dtype=self.dtype)
        key = torch.randn(
            1, self.kv_heads, length, self.head_dim, device=self.device, dtype=self.dtype
        )
        return query, key, torch.randn_like(key)

    def kwargs(self, torch: Any, length: int) -> dict[str, Any]:
        if self.form == "grouped":  # no mask: causal by flag (prefill), GQA inside the kernel
            return {"is_causal": self.phase == "prefill", "enable_gqa": True}
        queries = 1 if self.phase == "decode" else length
        allowed = torch.ones(queries, length, dtype=torch.bool, device=self.device)
        if self.phase == "prefill":
            allowed = torch.tril(allowed)
        return {"attn_mask": allowed[None, None]}


def _side(torch: Any, shape: _Shape, lengths: list[int]) -> dict[str, Any]:
    new, seen, backend = [], [], -1
    for length in lengths:
        inputs, kwargs = shape.inputs(torch, length), shape.kwargs(torch, length)
        backend = int(torch._fused_sdp_choice(*inputs, **kwargs))
        new.append(_timed(torch, shape.device, inputs, kwargs))
    for length in lengths:
        inputs, kwargs = shape.inputs(torch, length), shape.kwargs(torch, length)
        seen.append(_timed(torch, shape.device, inputs, kwargs))
    return {
        "backend": BACKEND_NAMES.get(backend, str(backend)),
        "new_ms": statistics.median(new),
        "seen_ms": statistics.median(seen),
        "lengths": lengths,
    }


def _timed(torch: Any, device: str, inputs: tuple[Any, Any, Any], kwargs: dict[str, Any]) -> float:
    """Milliseconds of one attention call, `device` itself synchronised on both sides."""
    cuda = device.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    sync()
    started = time.perf_counter()
    torch.nn.functional.scaled_dot_product_attention(*inputs, **kwargs)
    sync()
    return (time.perf_counter() - started) * 1000


def report(figures: dict[str, Any]) -> Iterator[str]:
    yield f"attention per new shape on {figures['device']} ({figures['dtype']}):"
    for phase in PHASES:
        for form in FORMS:
            for side, row in figures[phase][form].items():
                yield (
                    f"  {phase:7} {form:8} {side:16} picks {row['backend']:28} new shape "
                    f"{row['new_ms']:8.2f} ms, seen shape {row['seen_ms']:8.2f} ms"
                )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.device:  # there: `--device cuda` without a GPU, `cuda:3` on a machine with one
        from ..models import ModelError, pick_device

        try:
            pick_device(args.device)
        except ModelError as exc:
            raise SystemExit(f"bench attention: {exc}") from None
    figures = measure(args)
    for line in report(figures):
        print(line, flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=1)
    return 0
