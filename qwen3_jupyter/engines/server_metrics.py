"""What a served model's server says about its load: KV-cache usage, running and waiting requests.

vLLM and SGLang publish Prometheus metrics at `/metrics` on the API port; the model's GPU memory
lives there, not in this kernel, so this is the only honest view of it from a notebook. The text
is parsed with `prometheus_client`'s parser. Reading happens on the monitor's polling thread with
a short timeout (never on the kernel's main thread), and at most every few seconds per server.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

# Metric names by server. vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc (V1 engine).
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
_RANK_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank"})

READ_EVERY_S = 2.0
MISSING_RETRY_S = 30.0
TIMEOUT_S = 0.5
MEMORY_ELSEWHERE = "model memory lives on the server"


@dataclass(frozen=True)
class ServerLoad:
    """One reading of a server's load. Figures are None when the server does not publish them;
    `error` says why there are none at all (no /metrics, unreachable)."""

    url: str
    """The server's address as messages may show it (credentials masked)."""
    server: str | None = None
    """'vLLM' or 'SGLang' when the metric names say so."""
    kv_cache_usage: float | None = None
    """Fraction of the KV cache in use, 0..1."""
    running: int | None = None
    waiting: int | None = None
    error: str | None = None

    def describe(self) -> str:
        """'vLLM · KV cache 37% · 2 running · 0 waiting · model memory lives on the server'."""
        parts = [self.server] if self.server else []
        if self.kv_cache_usage is not None:
            parts.append(f"KV cache {round(100 * self.kv_cache_usage)}%")
        if self.running is not None:
            parts.append(f"{self.running} running")
        if self.waiting is not None:
            parts.append(f"{self.waiting} waiting")
        if self.error:
            parts.append(self.error)
        parts.append(MEMORY_ELSEWHERE)
        return " · ".join(parts)


def parse_metrics(text: str, url: str) -> ServerLoad:
    """The load figures in a Prometheus exposition text (vLLM's or SGLang's names).

    Several label sets (data-parallel engines, one per model) add up for request counts; the
    same figure repeated per tensor/pipeline rank counts once; KV-cache usage is the fullest.
    Unparseable text raises ValueError.
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            if math.isfinite(value):  # a NaN gauge (no data yet) is unknown: it froze the gauge
                samples.setdefault(sample.name, []).append((dict(sample.labels), value))
    kv = _first(samples, KV_CACHE_USAGE)
    running = _first(samples, RUNNING)
    waiting = _first(samples, WAITING)
    found = [n for n in (*KV_CACHE_USAGE, *RUNNING, *WAITING) if n in samples]
    server = None
    if found:
        server = "vLLM" if found[0].startswith("vllm:") else "SGLang"
    return ServerLoad(
        url=url,
        server=server,
        kv_cache_usage=max(v for _, v in kv) if kv else None,
        running=_count(running) if running else None,
        waiting=_count(waiting) if waiting else None,
        error=None if found else "no KV-cache or request metrics at /metrics",
    )


def _first(
    samples: dict[str, list[tuple[dict[str, str], float]]], names: Iterable[str]
) -> list[tuple[dict[str, str], float]]:
    for name in names:
        if name in samples:
            return samples[name]
    return []


def _count(values: list[tuple[dict[str, str], float]]) -> int:
    if any(labels.get("priority") == "" for labels, _ in values):
        # SGLang with priority scheduling repeats its total as one figure per priority
        values = [(labels, value) for labels, value in values if not labels.get("priority")]
    by_key: dict[tuple[tuple[str, str], ...], float] = {}
    for labels, value in values:
        key = tuple(sorted((k, v) for k, v in labels.items() if k not in _RANK_LABELS))
        by_key[key] = max(by_key.get(key, 0.0), value)
    return round(sum(by_key.values()))


class MetricsReader:
    """Reads one server's `/metrics`, at most every `every` seconds; `read()` never raises (the
    gauge polls every server's reader on one thread: one that raised would end every row).

    A server without metrics (404, `transformers serve`) is asked again only every 30 s.
    """

    def __init__(
        self,
        metrics_url: str,
        shown_url: str,
        headers: dict[str, str] | None = None,
        every: float = READ_EVERY_S,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self._metrics_url = metrics_url
        self._shown_url = shown_url
        self._headers = dict(headers or {})
        self._every = every
        self._timeout = timeout
        self._lock = threading.Lock()
        self._last: ServerLoad | None = None
        self._next_at = 0.0

    def __repr__(self) -> str:
        return f"<MetricsReader {self._shown_url}>"

    def read(self) -> ServerLoad:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now < self._next_at:
                return self._last
            load, wait = self._fetch()
            self._last, self._next_at = load, time.monotonic() + wait
            return load

    def _fetch(self) -> tuple[ServerLoad, float]:
        request = urllib.request.Request(self._metrics_url, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                text = response.read(4 * 1024 * 1024).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            why = f"no /metrics (HTTP {exc.code})"
            return ServerLoad(self._shown_url, error=why), MISSING_RETRY_S
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return ServerLoad(self._shown_url, error=f"metrics unreachable ({reason})"), self._every
        except Exception as exc:  # a garbled reply (http.client's BadStatusLine, IncompleteRead)
            why = f"metrics unreadable ({type(exc).__name__})"
            return ServerLoad(self._shown_url, error=why), self._every
        try:
            return parse_metrics(text, self._shown_url), self._every
        except Exception:  # ValueError, or whatever else the parser meets in odd text
            why = "/metrics is not Prometheus text"
            return ServerLoad(self._shown_url, error=why), MISSING_RETRY_S
