"""`python -m qwen3_jupyter.bench remote`: what `%qwen3 --server` costs over a bare `openai` call,
and batch throughput at several concurrencies, against an OpenAI-compatible server.

By default the server is `transformers serve` of the embedded tiny model on this machine's CPU
(started and stopped here); `--url` points the same measurements at any server, e.g. vLLM:
`vllm serve Qwen/Qwen3-1.7B --reasoning-parser qwen3` then `--url http://host:8000/v1
--ignore-eos`.

Overhead: both ways run as cells of one real kernel, timed from the client (execute request to
idle), alternating, with the same prompt, greedy decoding and the same number of tokens (checked
from the server's usage figures); the bare cell makes one `openai.OpenAI` client once and streams
with it, as a careful notebook would. Throughput: `generate_batch(server=...)` of the same
prompts at each concurrency, in the same kernel.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import psutil

from ._kernel import Kernel, timed_cell
from ._openai_server import serve_tiny

PROMPT = "Explain in detail how a Jupyter kernel keeps state between cells."

BARE_SETUP = """
import openai
_client = openai.OpenAI(base_url={url!r}, api_key=__import__('os').environ.get(
    'QWEN3_JUPYTER_API_KEY') or 'EMPTY', max_retries=0)
_model = {model!r} or _client.models.list().data[0].id
"""
BARE_CELL = """
_extra = {{"chat_template_kwargs": {{"enable_thinking": False}}}}
if {ignore_eos}:
    _extra["ignore_eos"] = True
_stream = _client.chat.completions.create(
    model=_model, messages=[{{"role": "user", "content": {prompt!r}}}], stream=True,
    max_tokens={n}, temperature=0.0, stream_options={{"include_usage": True}}, extra_body=_extra)
_parts, _usage = [], None
for _chunk in _stream:
    _usage = _chunk.usage or _usage
    for _choice in _chunk.choices:
        if _choice.delta.content:
            _parts.append(_choice.delta.content)
print("".join(_parts)[:80])
_bare_tokens = _usage.completion_tokens
del _stream, _chunk, _parts
"""
MAGIC_CELL = (
    "%qwen3 --server {url} {model_flag}--greedy --no-think {eos}--max-new-tokens {n} {prompt}"
)
BATCH_CELL = """
_prompts = [f"Question {{i}}: {prompt}" for i in range({count})]
_res = qwen3_jupyter.generate_batch(_prompts, server={url!r}, {model_arg}concurrency={c},
    greedy=True, think=False, max_new_tokens={n}, ignore_eos={ignore_eos}, progress=False)
_row = (_res.report.seconds, sum(r.completion_tokens for r in _res),
        statistics.median(r.latency_s for r in _res if not r.failed), _res.report.failed)
"""


def measure(
    args: argparse.Namespace, url: str
) -> tuple[dict[str, float], list[tuple[int, float, int, float, int]]]:
    """The overhead figures and one throughput row per concurrency, from one kernel."""
    kernel = Kernel({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    eos = "--ignore-eos " if args.ignore_eos else ""
    model_flag = f"--model {args.model} " if args.model else ""
    magic = MAGIC_CELL.format(url=url, model_flag=model_flag, eos=eos, n=args.tokens, prompt=PROMPT)
    bare = BARE_CELL.format(prompt=PROMPT, n=args.tokens, ignore_eos=args.ignore_eos)
    try:
        timed_cell(kernel, "%load_ext qwen3_jupyter\nimport statistics, qwen3_jupyter")
        timed_cell(kernel, BARE_SETUP.format(url=url, model=args.model or ""))
        timed_cell(kernel, magic)  # warm: client, connection, the server's first request
        timed_cell(kernel, bare)
        bare_s, magic_s = [], []
        for i in range(args.repeats):
            bare_s.append(timed_cell(kernel, bare))
            magic_s.append(timed_cell(kernel, magic))
            tokens = (kernel.value("_bare_tokens"), kernel.value("_qwen3.completion_tokens"))
            if tokens[0] != tokens[1]:
                raise RuntimeError(f"token counts differ (bare, %qwen3) = {tokens}")
            print(
                f"  run {i + 1}/{args.repeats}: bare {bare_s[-1]:.3f} s, "
                f"%qwen3 {magic_s[-1]:.3f} s ({tokens[0]} tokens)",
                flush=True,
            )
        overhead = {
            "bare_s": statistics.median(bare_s),
            "magic_s": statistics.median(magic_s),
            "tokens": float(tokens[0]),
        }
        overhead["ratio"] = overhead["magic_s"] / overhead["bare_s"]
        rows = []
        for c in (int(x) for x in args.concurrency.split(",")):
            timed_cell(
                kernel,
                BATCH_CELL.format(
                    prompt=PROMPT,
                    count=args.prompts,
                    url=url,
                    model_arg=f"model={args.model!r}, " if args.model else "",
                    c=c,
                    n=args.batch_tokens,
                    ignore_eos=args.ignore_eos,
                ),
            )
            seconds, tokens_total, latency, failed = kernel.value("_row")
            rows.append((c, seconds, tokens_total, latency, failed))
            print(f"  concurrency {c}: {seconds:.2f} s, {tokens_total} tokens", flush=True)
    finally:
        kernel.shutdown()
    return overhead, rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench remote", description=__doc__
    )
    parser.add_argument("--url", help="an OpenAI base URL (default: serve the tiny model here)")
    parser.add_argument("--model", help="the served model (default: the server's first)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per overhead call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per batch")
    parser.add_argument("--batch-tokens", type=int, default=32, help="new tokens per prompt")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="send vLLM's ignore_eos so every call makes exactly --tokens tokens (vLLM, SGLang)",
    )
    parser.add_argument(
        "--continuous-batching",
        action="store_true",
        help="serve the tiny model with transformers' continuous batching (without it, "
        "`transformers serve` runs one request at a time)",
    )
    args = parser.parse_args(argv)
    server = None
    with tempfile.TemporaryDirectory(prefix="qwen3-bench-remote-") as tmp:
        url = args.url
        if url is None:
            print("starting transformers serve of the tiny model on this CPU…", flush=True)
            extra = ("--continuous-batching",) if args.continuous_batching else ()
            server = serve_tiny(Path(tmp), extra_args=extra)
            url = server.url
        try:
            print(f"{url}: {args.tokens} tokens, {args.repeats} alternating runs", flush=True)
            overhead, rows = measure(args, url)
        finally:
            if server is not None:
                server.stop()
    batching = ", continuous batching" if args.continuous_batching else ""
    where = f"transformers serve{batching}, tiny model, CPU" if args.url is None else url
    cores = psutil.cpu_count(logical=True)
    print()
    print(f"server: {where}; client machine: {platform.machine()}, {cores} cores")
    print("| bare openai call (median s) | %qwen3 --server end to end (median s) | ratio |")
    print("|---|---|---|")
    print(f"| {overhead['bare_s']:.3f} | {overhead['magic_s']:.3f} | {overhead['ratio']:.3f} |")
    print(f"({overhead['tokens']:.0f} tokens per call; target: ratio <= 1.05)")
    print()
    print(f"batch of {args.prompts} prompts x {args.batch_tokens} tokens:")
    print("| concurrency | seconds | tokens/s | prompts/s | median latency per prompt | failed |")
    print("|---|---|---|---|---|---|")
    for c, seconds, tokens_total, latency, failed in rows:
        print(
            f"| {c} | {seconds:.2f} | {tokens_total / seconds:.1f} | "
            f"{args.prompts / seconds:.2f} | {latency:.3f} s | {failed} |"
        )
    return 0
