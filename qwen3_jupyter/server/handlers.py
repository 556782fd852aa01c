"""`GET {base_url}qwen3-jupyter/metrics`: authenticated, authorised, served from the cache.

`?interval=<seconds>` says how often the client polls, so the sampler keeps running between
the polls of a slow client (see `Sampler.request`); clients that omit it get `idle_timeout`.

The handler never calls NVML or walks processes itself: it lists the kernels (what the kernel and
session managers already hold), tells the sampler which to watch, and formats its last sample.
"""

from __future__ import annotations

import json
from typing import Any

import tornado.web
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from .kernels import running_kernels
from .payload import build_payload
from .sampler import Sampler, WatchedKernel

AUTH_RESOURCE = "kernels"
"""Kernel metrics are kernel information: reading them needs the `kernels` read permission."""


class MetricsHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, sampler: Sampler) -> None:
        self.sampler = sampler

    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        kernels = await running_kernels(self.kernel_manager, self.settings.get("session_manager"))
        watched = [w for w in (k.watched() for k in kernels) if isinstance(w, WatchedKernel)]
        self.sampler.request(watched, client_interval(self.get_query_argument("interval", None)))
        sample = await self.sampler.current()
        if sample is None:
            raise tornado.web.HTTPError(503, no_sample_message(self.sampler.stuck_for()))
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(build_payload(sample, kernels, self.sampler.interval)))


def client_interval(value: str | None) -> float | None:
    """The `?interval=` a client sent, in seconds (None when absent or not a number; the sampler
    ignores what is not a positive finite number)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def no_sample_message(stuck_for: float | None) -> str:
    """Why there is nothing to show: not read yet, or NVML hung (a driver reset, a lost GPU)."""
    if stuck_for is None:
        return "The GPU memory sampler has no reading yet; try again in a few seconds."
    return (
        f"NVML has not answered for {stuck_for:.0f} s (a GPU driver reset or a lost GPU?), so "
        "there is no GPU memory reading yet; try again later."
    )


def metrics_url(base_url: str) -> str:
    return url_path_join(base_url, "qwen3-jupyter", "metrics")


def handlers(base_url: str, sampler: Sampler) -> list[tuple[str, type[Any], dict[str, Any]]]:
    return [(metrics_url(base_url), MetricsHandler, {"sampler": sampler})]
