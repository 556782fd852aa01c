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
import importlib.util
import os
import platform
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil

from ._cli import positive_int, positive_ints
from ._kernel import Kernel, timed_cell
from ._openai_server import OpenAIServer, served_checkpoint
from .overhead import medians, runs_so_far

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


Row = tuple[int, float, int, float, int]
"""One throughput row: concurrency, seconds, tokens, median latency per prompt, failed."""


def measure(args: argparse.Namespace, url: str) -> tuple[dict[str, float], list[Row]]:
    """The overhead figures and one throughput row per concurrency, from one kernel."""
    print(f"{url}: {args.tokens} tokens, {args.repeats} alternating runs", flush=True)
    kernel = Kernel({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        timed_cell(kernel, "%load_ext qwen3_jupyter\nimport statistics, qwen3_jupyter")
        timed_cell(kernel, BARE_SETUP.format(url=url, model=args.model or ""))
        overhead = _overhead(kernel, args, url)
        rows = [_throughput(kernel, args, url, c) for c in args.concurrency]
    finally:
        kernel.shutdown()
    return overhead, rows


def _overhead(kernel: Kernel, args: argparse.Namespace, url: str) -> dict[str, float]:
    """Median seconds of the bare call and of `%qwen3 --server`, alternated, and their ratio;
    a Ctrl-C says the medians of the runs made before it."""
    eos = "--ignore-eos " if args.ignore_eos else ""
    model_flag = f"--model {args.model} " if args.model else ""
    magic = MAGIC_CELL.format(url=url, model_flag=model_flag, eos=eos, n=args.tokens, prompt=PROMPT)
    bare = BARE_CELL.format(prompt=PROMPT, n=args.tokens, ignore_eos=args.ignore_eos)
    timed_cell(kernel, magic)  # warm: client, connection, the server's first request
    timed_cell(kernel, bare)
    bare_s: list[float] = []
    magic_s: list[float] = []
    try:
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
    except KeyboardInterrupt:
        raise KeyboardInterrupt(runs_so_far("overhead", bare_s, magic_s, args.repeats)) from None
    return {**medians(bare_s, magic_s), "tokens": float(tokens[0])}


def _throughput(kernel: Kernel, args: argparse.Namespace, url: str, concurrency: int) -> Row:
    """`generate_batch(server=...)` of `--prompts` prompts at `concurrency`."""
    timed_cell(
        kernel,
        BATCH_CELL.format(
            prompt=PROMPT,
            count=args.prompts,
            url=url,
            model_arg=f"model={args.model!r}, " if args.model else "",
            c=concurrency,
            n=args.batch_tokens,
            ignore_eos=args.ignore_eos,
        ),
    )
    seconds, tokens_total, latency, failed = kernel.value("_row")
    print(f"  concurrency {concurrency}: {seconds:.2f} s, {tokens_total} tokens", flush=True)
    return (concurrency, seconds, tokens_total, latency, failed)


def base_url(text: str) -> str:
    """argparse type: an http(s) URL with a host (the OpenAI base URL, e.g. http://host:8000/v1)."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r}: an http(s) URL, e.g. http://127.0.0.1:8000/v1")
    return text


def check_answers(url: str, timeout: float = 10) -> None:
    """End the bench in one line where nothing answers at `url` (it was an 18-line
    APIConnectionError traceback, after a kernel had started). Any HTTP answer will do here:
    a server that refuses the key says so in the run's own one line."""
    request = urllib.request.Request(f"{url.rstrip('/')}/models")
    key = os.environ.get("QWEN3_JUPYTER_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(
            f"bench remote: no server answers at {url} ({reason}); start one, or leave out "
            "--url to serve the tiny model here"
        ) from None


def measure_or_exit(args: argparse.Namespace, url: str) -> tuple[dict[str, float], list[Row]]:
    """`measure`, with a failed cell (the server refused a request, a token count differs) as
    one line instead of a traceback through the harness."""
    try:
        return measure(args, url)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"bench remote: {str(exc).splitlines()[0]}") from None


def measure_served(args: argparse.Namespace) -> tuple[dict[str, float], list[Row]]:
    """Serve the tiny model here, measure against it, stop it. The server is stopped on every
    way out (it stayed running when its start failed or was interrupted), before its
    temporary folder goes; the log of a server that did not start is kept and named."""
    missing = missing_serving_modules()
    if missing:
        raise SystemExit(
            f"bench remote: serving the tiny model here needs transformers' serving extras "
            f"({', '.join(missing)} missing): pip install 'qwen3-jupyter[serve]', or give "
            "--url of a running server"
        )
    print("starting transformers serve of the tiny model on this CPU…", flush=True)
    extra = ("--continuous-batching",) if args.continuous_batching else ()
    with tempfile.TemporaryDirectory(prefix="qwen3-bench-remote-") as tmp:
        server = OpenAIServer(served_checkpoint(Path(tmp)), Path(tmp), extra_args=extra)
        try:
            try:
                server.start()
            except (RuntimeError, TimeoutError) as exc:
                raise SystemExit(f"bench remote: {server_failed(exc, server.log)}") from None
            return measure_or_exit(args, server.url)
        finally:
            server.stop()


SERVING_MODULES = ("fastapi", "uvicorn")
"""What `transformers serve` imports beyond transformers (its `serving` extra): without them
on a pip install, the server exited at once and the bench named only its log."""


def missing_serving_modules() -> list[str]:
    return [name for name in SERVING_MODULES if importlib.util.find_spec(name) is None]


def server_failed(exc: Exception, log: Path) -> str:
    """Why the server did not start, naming a copy of its log that outlives the temporary
    folder (the message named the log inside it, deleted on the way out) and its last line."""
    said = str(exc)
    if not log.exists():
        return said
    handle, kept = tempfile.mkstemp(prefix="qwen3-bench-remote-serve-", suffix=".log")
    os.close(handle)
    shutil.copyfile(log, kept)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    last = f"; its last line: {lines[-1].strip()[:200]}" if lines else ""
    return said.replace(str(log), kept) + last


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, every value checked before a server or kernel starts."""
    parser = argparse.ArgumentParser(
        prog="python -m qwen3_jupyter.bench remote", description=__doc__
    )
    parser.add_argument(
        "--url", type=base_url, help="an OpenAI base URL (default: serve the tiny model here)"
    )
    parser.add_argument("--model", help="the served model (default: the server's first)")
    parser.add_argument(
        "--tokens", type=positive_int, default=64, help="new tokens per overhead call (64)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=7, help="alternating overhead runs (7)"
    )
    parser.add_argument("--prompts", type=positive_int, default=32, help="prompts per batch (32)")
    parser.add_argument(
        "--batch-tokens", type=positive_int, default=32, help="new tokens per prompt (32)"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_ints,
        default="1,4,16",
        help="concurrencies of the batch runs, comma-separated (1,4,16)",
    )
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
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.url is not None:
        check_answers(args.url)
        overhead, rows = measure_or_exit(args, args.url)
    else:
        overhead, rows = measure_served(args)
    batching = ", continuous batching" if args.continuous_batching else ""
    where = f"transformers serve{batching}, tiny model, CPU" if args.url is None else args.url
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
