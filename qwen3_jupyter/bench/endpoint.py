"""`python -m qwen3_jupyter.bench endpoint`: metrics endpoint latency and NVML calls per second.

A real Jupyter server (in this process, so its NVML calls can be counted) runs 1, then 20
kernels. Latency: back-to-back GETs of `/qwen3-jupyter/metrics` from a client process; p50/p95
are Tornado's own request times (server side) and the client's round trips. NVML load: one
client, then ten, each polling once per second like the sidebar; NVML calls per second should
not change (one sampler thread, one cached reading).

Without a GPU NVML answers nothing after its failed init, so the sampler's reads per second
stand in for NVML polls. `--fake-gpus N` (repository checkout only) uses the test suite's fake
NVML with N GPUs whose process lists hold the kernels' PIDs, so attribution does real work.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import signal
import sys
import tempfile
import time
import types
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ._cli import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    positive_ints,
    run_main,
)
from ._server import InProcessServer

P95_TARGET_MS = 10.0
RATIO_OF = {
    "nvml_calls_per_s": "NVML calls",
    "sampler_reads_per_s": "sampler reads (no NVML here)",
}
"""What the clients' ratio counts: NVML calls, or without NVML the sampler's reads."""


class CountingNvml(types.ModuleType):
    """`pynvml` with every function call counted (installed as sys.modules["pynvml"])."""

    def __init__(self, wrapped: types.ModuleType) -> None:
        super().__init__("pynvml")
        self._wrapped = wrapped
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._wrapped, name)
        if not callable(value) or isinstance(value, type) or not name.startswith("nvml"):
            return value
        calls = self.calls

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return value(*args, **kwargs)

        return counted

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def _poll(url: str, token: str, seconds: float, period: float, count: int) -> list[float]:
    """One client (in its own process): GET `url` every `period` s (0: back to back).

    Stops after `seconds` or `count` requests; returns the round trips in seconds.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Authorization": f"token {token}"}
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(times) < count:
        started = time.perf_counter()
        connection.request("GET", parts.path, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {parts.path} answered {response.status}")
        elapsed = time.perf_counter() - started
        times.append(elapsed)
        if period:
            time.sleep(max(0.0, period - elapsed))
    connection.close()
    return times


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _install_nvml(fake_gpus: int) -> tuple[CountingNvml, Any]:
    """The counting pynvml over the real one, or over the test suite's fake with N GPUs."""
    fake = None
    wrapped: types.ModuleType
    if fake_gpus:
        try:
            from tests.fake_nvml import FakeGpu, FakeNvml
        except ImportError:
            raise SystemExit(
                "--fake-gpus needs the repository checkout (tests/fake_nvml.py)"
            ) from None
        fake = FakeNvml([FakeGpu(used=(i + 1) * 2**30) for i in range(fake_gpus)])
        wrapped = fake.module
    else:
        try:
            import pynvml

            wrapped = pynvml
        except ImportError:
            wrapped = types.ModuleType("pynvml")
    counting = CountingNvml(wrapped)
    sys.modules["pynvml"] = counting
    return counting, fake


def _spread_processes(fake: Any, pids: list[int]) -> None:
    """Put each kernel on one fake GPU (round robin), plus one foreign process per GPU."""
    from tests.fake_nvml import FakeProcess

    for i, gpu in enumerate(fake.gpus):
        gpu.processes = [FakeProcess(pid, 2**30) for pid in pids[i :: len(fake.gpus)]]
        gpu.processes.append(FakeProcess(4_000_000 + i, 2**29))


def _start_kernels(server: InProcessServer, total: int, ids: list[str]) -> None:
    while len(ids) < total:
        ids.append(server.new_session(f"bench-{len(ids)}.ipynb"))
    server.wait_for(
        lambda m: len(m["kernels"]) == total and all(k["rss"] for k in m["kernels"]), timeout=120
    )


def _rate(
    server: InProcessServer,
    pool: ProcessPoolExecutor,
    counting: CountingNvml,
    clients: int,
    seconds: float,
    period: float,
) -> dict[str, float]:
    sampler = server.sampler
    calls, samples = counting.total, sampler.samples_taken
    started = time.monotonic()
    futures = [
        pool.submit(
            _poll, server.url("qwen3-jupyter", "metrics"), server.token, seconds, period, 10**9
        )
        for _ in range(clients)
    ]
    requests = sum(len(f.result()) for f in futures)
    elapsed = time.monotonic() - started
    return {
        "nvml_calls_per_s": (counting.total - calls) / elapsed,
        "sampler_reads_per_s": (sampler.samples_taken - samples) / elapsed,
        "requests_per_s": requests / elapsed,
    }


def _ignore_interrupts() -> None:
    """A polling client's start: Ctrl-C reaches the whole foreground process group, and each
    client printed its own KeyboardInterrupt traceback; the bench stops them itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Start the server in a temporary root folder, measure, stop it and remove the folder
    (each run left an empty one behind)."""
    root = Path(tempfile.mkdtemp(prefix="qwen3-bench-endpoint-"))
    try:
        return _run_in(root, args, say)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_in(root: Path, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    counting, fake = _install_nvml(args.fake_gpus)
    results: dict[str, Any] = {"latency": {}, "nvml": {}}
    server = InProcessServer(root, sample_interval=args.interval).start()
    context = get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=max(args.clients, 1), mp_context=context, initializer=_ignore_interrupts
    )
    try:
        list(pool.map(time.sleep, [0.0] * args.clients))  # spawn the clients before timing
        kernel_ids: list[str] = []
        for total in args.kernels:
            say(f"starting {total} kernel(s)…")
            _start_kernels(server, total, kernel_ids)
            if fake is not None:
                _spread_processes(fake, [server.kernel_pid(k) for k in kernel_ids])
            url = server.url("qwen3-jupyter", "metrics")
            pool.submit(_poll, url, server.token, 60, 0, 20).result()  # warm up
            server.metrics_request_times.clear()
            client = pool.submit(_poll, url, server.token, 120, 0, args.requests).result()
            serverside = list(server.metrics_request_times)
            row = {
                "server_p50_ms": _ms(serverside, 0.50),
                "server_p95_ms": _ms(serverside, 0.95),
                "client_p50_ms": _ms(client, 0.50),
                "client_p95_ms": _ms(client, 0.95),
                "requests": len(client),
            }
            results["latency"][total] = row
            verdict = "ok" if row["server_p95_ms"] < P95_TARGET_MS else "ABOVE TARGET"
            say(
                f"  {total:>2} kernel(s): server p50 {row['server_p50_ms']:.2f} ms, "
                f"p95 {row['server_p95_ms']:.2f} ms ({verdict}, target < {P95_TARGET_MS:.0f} ms); "
                f"round trip p50 {row['client_p50_ms']:.2f} ms, p95 {row['client_p95_ms']:.2f} ms "
                f"over {row['requests']} requests"
            )
        say(
            f"polling every {args.poll:g} s for {args.seconds:g} s, "
            f"sampler interval {args.interval:g} s…"
        )
        for clients in (1, args.clients):
            row = _rate(server, pool, counting, clients, args.seconds, args.poll)
            results["nvml"][clients] = row
            say(
                f"  {clients:>2} client(s): {row['nvml_calls_per_s']:.1f} NVML calls/s, "
                f"{row['sampler_reads_per_s']:.2f} sampler reads/s, "
                f"{row['requests_per_s']:.1f} requests/s"
            )
        one, many = results["nvml"][1], results["nvml"][args.clients]
        key = "nvml_calls_per_s" if one["nvml_calls_per_s"] > 0 else "sampler_reads_per_s"
        ratio = many[key] / one[key] if one[key] else float("nan")
        results["ratio"] = ratio
        results["ratio_of"] = RATIO_OF[key]
        say(
            f"{args.clients} clients / 1 client, {RATIO_OF[key]} per second: {ratio:.2f} "
            "(target 1.0)"
        )
    finally:
        pool.shutdown(cancel_futures=True)
        server.stop()
    return results


def verdict(results: dict[str, Any]) -> tuple[bool, str]:
    """PASS or FAIL, with the figures judged, each named for what it is (the ratio read "NVML
    ratio" where, without NVML, it was the sampler's reads)."""
    p95 = max(row["server_p95_ms"] for row in results["latency"].values())
    ok = p95 < P95_TARGET_MS and results["ratio"] <= 1.2
    of = results.get("ratio_of", RATIO_OF["nvml_calls_per_s"])
    said = f"(worst server p95 {p95:.2f} ms; ratio of {of} per second {results['ratio']:.2f})"
    return ok, f"{'PASS' if ok else 'FAIL'} {said}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen3_jupyter.bench endpoint")
    parser.add_argument(
        "--kernels",
        type=positive_ints,
        default="1,20",
        help="running kernel counts to measure, comma separated (default 1,20)",
    )
    parser.add_argument(
        "--requests", type=positive_int, default=300, help="latency requests per count"
    )
    parser.add_argument(
        "--clients", type=positive_int, default=10, help="polling clients (default 10)"
    )
    parser.add_argument(
        "--seconds", type=positive_float, default=10.0, help="polling window (default 10)"
    )
    parser.add_argument(
        "--poll",
        type=non_negative_float,
        default=1.0,
        help="client poll period, s (default 1; 0: back to back)",
    )
    parser.add_argument(
        "--interval", type=positive_float, default=1.0, help="sampler interval, s (default 1)"
    )
    parser.add_argument(
        "--fake-gpus", type=non_negative_int, default=0, help="use the tests' fake NVML"
    )
    args = parser.parse_args(argv)
    ok, said = verdict(run(args))
    print(said)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main("endpoint", main, sys.argv[1:]))
