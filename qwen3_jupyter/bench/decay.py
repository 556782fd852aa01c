"""`python -m qwen3_jupyter.bench decay`: does latency or memory creep up call after call?

Reproduces the two tables users quote about Qwen3-1.7B in notebooks, on the same kind of work,
with ours side by side. Every strategy runs in a fresh real kernel (the output cache matters),
with the same prompt, greedy decoding and exactly `--tokens` new tokens per call.

Table A — sequential calls: naive notebook use (`model.generate(..., return_dict_in_generate=True)`
left as the cell's value), the hand recipe (`del` + `gc.collect()` + `torch.cuda.empty_cache()`),
`%qwen3` (its own cleanup), `%qwen3 --no-think`.
Table B — `generate_batch` at batch sizes 1, 2, 4, 8.

Memory: on CPU the kernel's RSS (sampled from outside every 10 ms for the peak) and the bytes of
live tensors inside it; on CUDA torch's allocated/peak bytes and NVML's figure for the process,
and how many segments the caching allocator had to get from the driver (cudaMalloc) during each
call.

`--quick`: 5 calls per strategy and batch sizes 1, 4, 8 (explicit `--calls`/`--batch-sizes`
still win), so the tables can be re-measured on a GPU in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from ..memory import format_bytes
from ..models import ModelError, pick_device
from ._cli import device_name, output_folder, positive_int
from ._kernel import Kernel, load_or_exit

PROMPT = "Explain step by step how a Jupyter kernel keeps state between cells."
STABLE_LATENCY = 0.05  # last 3 calls within 5% of the first 3 (see StrategyRun.stable)
# Retained memory is counted exactly (live tensor bytes, CUDA allocated bytes), so any growth
# from the first call to the last is real growth.
STABLE_MEMORY = 0


@dataclass(frozen=True)
class Preset:
    """Defaults of a run: calls per strategy and Table B's batch sizes."""

    calls: int
    batch_sizes: str


FULL = Preset(calls=10, batch_sizes="1,2,4,8")
QUICK = Preset(calls=5, batch_sizes="1,4,8")
"""`--quick`: 5 calls still give call 1, call 5 and medians of the first 2 and the last 2 (see
`StrategyRun.stable`); batch sizes 1, 4, 8 show the trend. Meant to finish in under three
minutes on a GPU; every run prints its wall time, so the first GPU run says whether it does."""

SETUP = """
import gc, json, torch
from qwen3_jupyter.session import SESSION as _S
from qwen3_jupyter.memory import live_tensor_bytes as _live
_l = _S.loaded
_text = _l.tokenizer.apply_chat_template(
    [{{"role": "user", "content": {prompt!r}}}], tokenize=False, add_generation_prompt=True,
    enable_thinking=True)
def _gen_kwargs():
    return dict(**_l.tokenizer(_text, return_tensors="pt").to(_l.device), max_new_tokens={n},
                min_new_tokens={n}, do_sample=False, pad_token_id=_l.tokenizer.pad_token_id,
                return_dict_in_generate=True)
"""
# The model's device, not "is there a GPU": `--device cpu` on a GPU machine measured the idle
# GPU's bytes (all zero) in place of the CPU's live tensors.
MEASURE = """
_m = {{"live": sum(_live().values()), "cuda": _l.device.startswith("cuda")}}
if _m["cuda"]:
    _m.update(allocated=torch.cuda.memory_allocated(_l.device),
              peak=torch.cuda.max_memory_allocated(_l.device),
              reserved=torch.cuda.memory_reserved(_l.device),
              device_allocs=torch.cuda.memory_stats(_l.device).get("num_device_alloc"))
    torch.cuda.reset_peak_memory_stats(_l.device)
try:
    from qwen3_jupyter.nvml import NvmlReader, process_gpu_memory
    import os as _os
    _r = NvmlReader(); _r.open(); _reading = _r.read(); _r.close()
    _m["nvml"] = sum(v or 0 for v in process_gpu_memory(_reading, {{_os.getpid()}}).values()) \\
        if _reading.available else None
except Exception:
    _m["nvml"] = None
print(json.dumps(_m))
del _m
"""
STRATEGIES: dict[str, tuple[str, str]] = {
    "naive (generate, result left in Out)": (
        "_l.model.generate(**_gen_kwargs())",
        "plain model.generate(return_dict_in_generate=True) as the cell's value, no cleanup",
    ),
    "hand recipe (del + gc + empty_cache)": (
        "_out = _l.model.generate(**_gen_kwargs())\n"
        "del _out\ngc.collect()\nif torch.cuda.is_available():\n    torch.cuda.empty_cache()",
        "the result kept in a variable, then del + gc.collect() + torch.cuda.empty_cache()",
    ),
    "%qwen3": (
        "%qwen3 --greedy --ignore-eos --max-new-tokens {n} {prompt}",
        "our magic with its automatic cleanup (thinking on, the default)",
    ),
    "%qwen3 --no-think": (
        "%qwen3 --no-think --greedy --ignore-eos --max-new-tokens {n} {prompt}",
        "our magic, Qwen3's enable_thinking=False",
    ),
}


class PeakSampler:
    """Samples a process tree's RSS from outside every `interval` seconds; keeps the peak."""

    def __init__(self, pid: int | None, interval: float = 0.01) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        if self.pid is None:
            return 0
        try:
            proc = psutil.Process(self.pid)
            return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
        except psutil.Error:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


@dataclass
class Call:
    latency_s: float
    peak_rss: int
    rss_after: int
    live_tensor_bytes: int
    cuda_peak: int | None = None
    cuda_allocated: int | None = None
    nvml_bytes: int | None = None
    cuda_device_allocs: int | None = None
    """Segments the caching allocator got from the driver (cudaMalloc) during this call."""


@dataclass
class StrategyRun:
    name: str
    description: str
    dtype: str = ""
    """The dtype the kernel loaded the model in ($QWEN3_JUPYTER_DTYPE may have chosen it)."""
    baseline_rss: int = 0
    baseline_live: int = 0
    baseline_cuda: int | None = None
    calls: list[Call] = field(default_factory=list)

    def retained(self) -> list[int]:
        """Memory left after each call, above the baseline (CUDA allocated, else live tensors)."""
        if self.calls and self.calls[0].cuda_allocated is not None:
            base = self.baseline_cuda or 0
            return [(c.cuda_allocated or 0) - base for c in self.calls]
        return [c.live_tensor_bytes - self.baseline_live for c in self.calls]

    def stable(self) -> bool | None:
        """Median latency of the last 3 calls within 5% of the first 3, and retained memory
        flat; None for a single call, which has no later call to compare with.

        The two windows never share a call (k = min(3, calls // 2)): with 3 calls or fewer they
        were the same calls, so a slowdown could not show (55% over 2 calls read "stable")."""
        latencies = [c.latency_s for c in self.calls]
        k = min(3, len(latencies) // 2)
        if k == 0:
            return None
        first, last = statistics.median(latencies[:k]), statistics.median(latencies[-k:])
        retained = self.retained()
        growing = retained[-1] > retained[0] + STABLE_MEMORY
        return abs(last - first) <= STABLE_LATENCY * first and not growing


def _json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"no measurement in output: {text[-300:]!r}")


def _ok(kernel: Kernel, code: str) -> Any:
    execution = kernel.run(code, timeout=3600)
    if execution.status != "ok":
        raise RuntimeError(f"cell failed: {code[:60]!r}: {execution.error_line}")
    return execution


def start_kernels(count: int) -> list[Kernel]:
    """`count` fresh kernels, started together and each done with the first call's imports.

    Why: a kernel per strategy is the point of the benchmark, and starting them one after
    another was most of a run on `tiny`. Started together they share the CPUs; all are idle
    before the first one is measured, so no start disturbs a measurement."""
    from ..session import FIRST_CALL_IMPORTS

    kernels: list[Kernel] = []
    try:
        for _ in range(count):
            env = {"PYTHONUNBUFFERED": "1"}
            kernels.append(Kernel(env, imports=FIRST_CALL_IMPORTS, wait=False))
        for kernel in kernels:
            kernel.wait_ready(timeout=600)
    except BaseException:
        shut_down_all(kernels)
        raise
    return kernels


def shut_down_all(kernels: list[Kernel]) -> None:
    """Shut every kernel down, even after one that fails to: a raise must not leak the rest."""
    for kernel in kernels:
        try:
            kernel.shutdown()
        except Exception as exc:
            print(f"bench decay: shutting a kernel down failed: {exc}", file=sys.stderr)


def _prepare_kernel(kernel: Kernel, model: str, device: str | None, tokens: int) -> str:
    """Load the extension and the model into a started kernel, and define the measuring code;
    returns the dtype the model was loaded in, which the header must say as the kernel chose
    it (it said float32 for every CPU run, bfloat16 ones included).
    The warm-up decodes eagerly, whatever the device: on CUDA a default call builds the fast
    path's decode step and keeps its cache, which the naive rows' kernels then held too (their
    peak inflated by it) and the `%qwen3` rows' call 1 no longer paid. A load that fails (no
    such model, no GPU) ends the bench in one line."""
    device_flag = f" --device {device}" if device else ""
    _ok(kernel, "%load_ext qwen3_jupyter")
    load_or_exit(
        kernel,
        f"%qwen3 --eager --model {model}{device_flag} --greedy --max-new-tokens 2 warm up",
        "decay",
    )
    _ok(kernel, SETUP.format(prompt=PROMPT, n=tokens))
    return str(kernel.value("str(_l.dtype)"))


def run_strategy(
    name: str,
    model: str,
    device: str | None,
    calls: int,
    tokens: int,
    log: Callable[[str], None],
    kernel: Kernel | None = None,
) -> StrategyRun:
    """`calls` sequential calls of one strategy in a fresh kernel (`kernel`, started by
    `start_kernels` and not used before, or a new one), measured after each; shuts it down."""
    code, description = STRATEGIES[name]
    cell = code.format(n=tokens, prompt=PROMPT)
    run = StrategyRun(name, description)
    kernel = kernel or Kernel({"PYTHONUNBUFFERED": "1"})
    try:
        run.dtype = _prepare_kernel(kernel, model, device, tokens)
        sampler = PeakSampler(kernel.pid)
        base = _json_line(_ok(kernel, MEASURE.format()).stdout)
        run.baseline_rss, run.baseline_live = sampler.rss(), int(base["live"])
        run.baseline_cuda = base.get("allocated")
        device_allocs = base.get("device_allocs")
        for i in range(calls):
            with PeakSampler(kernel.pid) as peak:
                started = time.perf_counter()
                _ok(kernel, cell)
                latency = time.perf_counter() - started
            m = _json_line(_ok(kernel, MEASURE.format()).stdout)
            run.calls.append(
                Call(
                    latency,
                    peak.peak,
                    peak.rss(),
                    int(m["live"]),
                    m.get("peak"),
                    m.get("allocated"),
                    m.get("nvml"),
                    _delta(device_allocs, m.get("device_allocs")),
                )
            )
            device_allocs = m.get("device_allocs")
            log(
                f"  {name}: call {i + 1}/{calls} {latency:.2f} s, "
                f"retained {format_bytes(run.retained()[-1])}"
            )
    finally:
        kernel.shutdown()
    return run


def _delta(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


@dataclass
class BatchRow:
    batch_size: int
    seconds: float
    seconds_per_item: float
    """The batch's wall time over its prompts: throughput's inverse, not any prompt's latency
    (every prompt of a chunk waits for the whole chunk)."""
    tokens_per_s: float
    peak_rss: int
    peak_generation_tensors: int
    cuda_peak: int | None


BATCH_CELL = """
import qwen3_jupyter
_prompts = [{prompt!r} + f" (variant {{i}})" for i in range({items})]
_r = qwen3_jupyter.generate_batch(_prompts, batch_size={size}, greedy=True, ignore_eos=True,
                                  max_new_tokens={n}, progress=False)
print(json.dumps({{"seconds": _r.report.seconds, "tokens": sum(x.completion_tokens for x in _r),
                  "held": _r.report.held_batch_size, "tensors": _r.report.peak_tensor_bytes,
                  "cuda_peak": torch.cuda.max_memory_allocated(_l.device)
                  if _l.device.startswith("cuda") else None}}))
del _r
"""


RESET_PEAK = 'if _l.device.startswith("cuda"): torch.cuda.reset_peak_memory_stats(_l.device)'


def run_batches(
    model: str,
    device: str | None,
    tokens: int,
    sizes: list[int],
    items: int,
    log: Callable[[str], None],
    kernel: Kernel | None = None,
) -> list[BatchRow]:
    kernel = kernel or Kernel({"PYTHONUNBUFFERED": "1"})
    rows = []
    try:
        _prepare_kernel(kernel, model, device, tokens)
        for size in sizes:
            _ok(kernel, RESET_PEAK)
            with PeakSampler(kernel.pid) as peak:
                out = _ok(
                    kernel, BATCH_CELL.format(prompt=PROMPT, items=items, size=size, n=tokens)
                )
            m = _json_line(out.stdout)
            rows.append(
                BatchRow(
                    size,
                    m["seconds"],
                    m["seconds"] / items,
                    m["tokens"] / m["seconds"],
                    peak.peak,
                    m["tensors"],
                    m["cuda_peak"],
                )
            )
            log(f"  batch {size}: {m['seconds']:.2f} s for {items} prompts")
    finally:
        kernel.shutdown()
    return rows


def table_a(runs: list[StrategyRun], cuda: bool) -> str:
    columns = _call_columns(min(len(run.calls) for run in runs))
    peak_label = "peak CUDA allocated" if cuda else "peak kernel RSS"
    retained_label = "retained CUDA allocated" if cuda else "retained live tensors"
    calls = " | ".join(f"call {n}" for n in columns)
    lines = [
        f"| strategy | {calls} | {peak_label} | {retained_label} | retained RSS | stable |",
        "|---|" + "---|" * (len(columns) + 4),
    ]
    for run in runs:
        peak = max((c.cuda_peak or 0) if cuda else c.peak_rss for c in run.calls)
        rss = run.calls[-1].rss_after - run.baseline_rss
        latencies = " | ".join(f"{run.calls[n - 1].latency_s:.2f} s" for n in columns)
        lines.append(
            f"| {run.name} | {latencies} | {format_bytes(peak)} "
            f"| {format_bytes(run.retained()[-1])} | {format_bytes(rss)} "
            f"| {_verdict(run.stable())} |"
        )
    lines += ["", STABLE_MEANS]
    if any(run.stable() is None for run in runs):
        lines.append(ONE_CALL)
    return "\n".join(lines)


STABLE_MEANS = (
    "stable: the median latency of the last 3 calls is within 5% of the first 3 (the last and "
    "first half, rounded down, with fewer than 6 calls: the two never share a call) and "
    "retained memory did not grow."
)
ONE_CALL = "n/a: one call has no later call to compare it with (run --calls 2 or more)."


def _verdict(stable: bool | None) -> str:
    return "n/a" if stable is None else "yes" if stable else "no"


def _call_columns(calls: int) -> list[int]:
    """The calls Table A shows: the first, the fifth and the last (1, 5, 10 for a full run)."""
    return sorted({1, min(5, calls), calls})


def table_b(rows: list[BatchRow], cuda: bool) -> str:
    label = "peak CUDA allocated" if cuda else "peak kernel RSS"
    lines = [
        f"| batch size | {label} | peak generation tensors | time per item | tokens/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        peak = r.cuda_peak if cuda and r.cuda_peak is not None else r.peak_rss
        lines.append(
            f"| {r.batch_size} | {format_bytes(peak)} | "
            f"{format_bytes(r.peak_generation_tensors)} | {r.seconds_per_item:.2f} s | "
            f"{r.tokens_per_s:.1f} |"
        )
    lines += ["", TIME_PER_ITEM]
    return "\n".join(lines)


TIME_PER_ITEM = (
    "time per item: the batch's seconds over its prompts (the inverse of throughput; each "
    "prompt waits for its whole chunk)."
)


def plot(runs: list[StrategyRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        x = list(range(1, len(run.calls) + 1))
        lat.plot(x, [c.latency_s for c in run.calls], marker="o", label=run.name)
        mem.plot(x, [r / 2**20 for r in run.retained()], marker="o", label=run.name)
    lat.set(title="latency per call", xlabel="call", ylabel="seconds")
    mem.set(title="memory retained after each call", xlabel="call", ylabel="MiB")
    lat.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_benchmark(
    model: str = "random:Qwen3-1.7B",
    calls: int = 10,
    tokens: int = 32,
    device: str | None = None,
    sizes: tuple[int, ...] = (1, 2, 4, 8),
    out_dir: Path = Path("out"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run both tables; write JSON and PNG into `out_dir`; return everything measured."""
    cuda = pick_device(device).startswith("cuda")
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    log(f"starting {len(STRATEGIES) + 1} fresh kernels (one per strategy, one for the batches)")
    kernels = start_kernels(len(STRATEGIES) + 1)
    runs: list[StrategyRun] = []
    try:
        for name in STRATEGIES:
            log(f"{name}: {calls} calls of {tokens} tokens")
            runs.append(run_strategy(name, model, device, calls, tokens, log, kernels.pop(0)))
        log(f"generate_batch: batch sizes {', '.join(map(str, sizes))}")
        batch_rows = run_batches(model, device, tokens, list(sizes), max(sizes), log, kernels.pop())
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"{len(runs)} of {len(STRATEGIES)} strategies measured (above); nothing written"
        ) from None
    finally:
        shut_down_all(kernels)  # those a failed strategy never reached
    header = run_header(model, cuda, _dtypes(runs), tokens, calls, started)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"decay-{model.replace(':', '_').replace('/', '_')}-{'cuda' if cuda else 'cpu'}"
    png, data_path = out_dir / f"{stem}.png", out_dir / f"{stem}.json"
    plot(runs, png)
    data = {
        "header": header,
        "model": model,
        "device": "cuda" if cuda else "cpu",
        "tokens": tokens,
        "calls": calls,
        "date": started.isoformat(),
        "table_a": table_a(runs, cuda),
        "table_b": table_b(batch_rows, cuda),
        "strategies": [asdict(r) | {"stable": r.stable(), "retained": r.retained()} for r in runs],
        "batches": [asdict(r) for r in batch_rows],
        "plot": str(png),
        "seconds": time.perf_counter() - clock,
    }
    data_path.write_text(json.dumps(data, indent=2))
    data["json"] = str(data_path)
    return data


def _dtypes(runs: list[StrategyRun]) -> str:
    """The dtype the kernels loaded the model in (each strategy's, should they differ)."""
    return "/".join(sorted({run.dtype for run in runs if run.dtype})) or "unknown"


def run_header(
    model: str, cuda: bool, dtype: str, tokens: int, calls: int, started: datetime
) -> str:
    """The line above the tables (and the JSON's `header`): what was measured, and how."""
    memory = (
        "CUDA: torch allocated/peak bytes, NVML process memory"
        if cuda
        else "CPU: kernel RSS (peak sampled every 10 ms from outside) and live tensor bytes"
    )
    return (
        f"device {'cuda' if cuda else 'cpu'}, model {model}, dtype {dtype}, {tokens} new tokens "
        f"per call (EOS ignored), greedy, {calls} calls per strategy, {started:%Y-%m-%d}; memory "
        f"means {memory}"
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        pick_device(args.device)  # before five kernels start: no GPU is a one-line error
    except ModelError as exc:
        raise SystemExit(f"bench decay: {exc}") from None
    sizes = tuple(int(s) for s in args.batch_sizes.split(","))
    data = run_benchmark(args.model, args.calls, args.tokens, args.device, sizes, args.out)
    print()
    print(data["header"])
    print("\nTable A: sequential calls\n")
    print(data["table_a"])
    print("\nTable B: generate_batch\n")
    print(data["table_b"])
    mallocs = device_allocs_line(data["strategies"])
    if mallocs:
        print(f"\n{mallocs}")
    print(f"\nfinished in {data['seconds']:.0f} s; wrote {data['json']} and {data['plot']}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with `--quick`'s defaults where no explicit value was given."""
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench decay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="random:Qwen3-1.7B", help="default: %(default)s")
    parser.add_argument("--calls", type=positive_int, default=None, help=f"default {FULL.calls}")
    parser.add_argument("--tokens", type=positive_int, default=32, help="new tokens per call (32)")
    parser.add_argument(
        "--device", type=device_name, default=None, help="default: cuda if present, else cpu"
    )
    parser.add_argument(
        "--batch-sizes", default=None, help=f"comma-separated, default {FULL.batch_sizes}"
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        default="out",  # a string: argparse checks it with `type` as it would a given one
        help="folder for the JSON and the plot, checked before the run (out)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.calls} calls, batch sizes {QUICK.batch_sizes}: minutes on a GPU",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    if args.calls is None:
        args.calls = preset.calls
    if args.batch_sizes is None:
        args.batch_sizes = preset.batch_sizes
    try:
        sizes = [int(s) for s in str(args.batch_sizes).split(",")]
    except ValueError:
        parser.error(
            f"--batch-sizes takes whole numbers separated by commas, not {args.batch_sizes!r}"
        )
    if not sizes or min(sizes) < 1:
        parser.error("--batch-sizes must all be >= 1")
    return args


def device_allocs_line(strategies: list[dict[str, Any]]) -> str:
    """'cudaMalloc calls during each call: naive 12, 0, 0 · ...' (CUDA runs only, else '')."""
    parts = []
    for strategy in strategies:
        counts = [c.get("cuda_device_allocs") for c in strategy["calls"]]
        if any(n is not None for n in counts):
            parts.append(f"{strategy['name']} {', '.join(str(n) for n in counts)}")
    return "cudaMalloc calls during each call: " + " · ".join(parts) if parts else ""
