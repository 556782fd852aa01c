"""The JSON of `GET /qwen3-jupyter/metrics`, built from one cached sample and the kernel list.

Pure (no I/O), so the schema is tested without a server. The TypeScript interfaces in
`labextension/src/metrics.ts` mirror these keys one for one. Sizes are bytes; None (JSON null)
is "unknown", never zero; in `history.gpu_memory_used`, a null point is a sample in which that
GPU could not be read (a gap in the sparkline, not memory freed). A kernel whose process is
gone (a zombie after SIGKILL, until the restarter replaces it) has `execution_state` "dead".
A kernel's `notebook_path` is that of the notebook using it (a notebook before a console
opened on it); a kernel only a console uses has none, and `console_name` ("Console 1"; added
after the first release, null otherwise) says which console it is.
Per-GPU maps are keyed by `gpu_key` ("0", or "0/1" for MIG instance 1 of GPU 0). Only PIDs
and sizes are exposed: never command lines or environments.

`unread_gpus` (added after the first release; older servers omit it, so clients treat a missing
key as []) lists the GPUs NVML counted but could not read in this sample, such as a GPU lost
mid-session (fallen off the bus): `gpus` lists only what answered, so without it a lost GPU
would simply vanish. Each entry is `{"key", "index", "error", "lost"}`: `key` and `index` as in
`gpus` (always a physical GPU, never a MIG slot), `error` NVML's message ("GPU is lost"; null
when it gave none) and `lost` true when NVML reported the GPU lost (a GPU reset or a reboot
brings it back; whatever was on it is gone). When NVML could not even count the GPUs, the
entries are the GPUs of earlier samples (in `history`), all with the same `error`.
"""

from __future__ import annotations

import re
import time
from typing import Any

from ..nvml import SHOWING_INSTEAD
from .kernels import KernelInfo, attribute
from .sampler import Sample, gpu_key, stale_after

_PROBLEM = re.compile(r"GPU (\d+)(?: MIG)?: (.*?)(?=; GPU \d+(?: MIG)?: |$)")


def unread_gpus(sample: Sample) -> list[dict[str, Any]]:
    """The GPUs NVML counted but could not read, with NVML's message for each (parsed from the
    reading's `reason`, "NVML error: GPU 1: GPU is lost; GPU 3: ...")."""
    reading = sample.nvml
    if not reading.available:
        return []
    reason = reading.reason or ""
    body = reason.removeprefix("NVML error:").strip()
    errors: dict[int, str] = {}
    for match in _PROBLEM.finditer(body):
        errors.setdefault(int(match.group(1)), match.group(2).strip())
    unread = sample.unread_gpus
    if unread is None:
        # NVML could not count the GPUs: those of earlier samples are the ones not read.
        seen = {key for point in sample.history for key in point.gpu_memory_used}
        indices = sorted({int(key.split("/")[0]) for key in seen})
        common: str | None = body or None
        entries = [(index, common) for index in indices]
    else:
        entries = [(index, errors.get(index)) for index in sorted(unread)]
    return [
        {
            "key": str(index),
            "index": index,
            "error": error,
            "lost": error is not None and "lost" in error.lower(),
        }
        for index, error in entries
    ]


def build_payload(
    sample: Sample,
    kernels: list[KernelInfo],
    interval: float,
    now: float | None = None,
) -> dict[str, Any]:
    """Every reading the sampler keeps goes out (`c.Qwen3JupyterMetrics.history_length` sets
    how many: a cap here made that setting do nothing). `stale` is true when the sample is
    older than `stale_after(interval)`: the sampler is stuck in NVML (a hung driver) and this
    is the last reading it got, `sample_age_s` old."""
    reading = sample.nvml
    age = max(0.0, (time.time() if now is None else now) - sample.timestamp)
    gpu_keys = [gpu_key(g.index, g.mig_parent) for g in reading.gpus]
    attribution = attribute(reading, sample.trees, sample.local_pids, sample.unread_gpus)
    rows = []
    for kernel in kernels:
        tree = sample.trees.get(kernel.pid) if kernel.pid is not None else None
        gone = tree is not None and tree.gone
        if gone:
            tree = None  # killed (a zombie until reaped): nothing of it is known any more
        if not reading.available:
            gpu_memory: dict[str, int | None] = {}
            total: int | None = None
        elif tree is None:
            gpu_memory = dict.fromkeys(gpu_keys)
            total = None
        else:
            gpu_memory = dict(attribution.kernels.get(kernel.pid or -1, {}))
            total = attribution.totals.get(tree.pid)
        rows.append(
            {
                "kernel_id": kernel.kernel_id,
                "name": kernel.name,
                "notebook_path": kernel.notebook_path,
                "console_name": kernel.console_name,
                "pid": kernel.pid,
                "rss": tree.rss if tree else None,
                "gpu_memory": gpu_memory,
                "gpu_memory_total": total,
                "extension_loaded": bool(tree and tree.extension_loaded),
                "execution_state": "dead" if gone else kernel.execution_state,
            }
        )
    history = sample.history
    return {
        "available": reading.available,
        "reason": reading.reason.removesuffix(SHOWING_INSTEAD) if reading.reason else None,
        "timestamp": sample.timestamp,
        "driver_version": reading.driver_version,
        "gpus": [
            {
                "key": key,
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "memory_used": g.memory_used,
                "memory_total": g.memory_total,
                "utilization": g.utilization,
                "mig_parent": g.mig_parent,
                "memory_source": g.memory_source,
            }
            for key, g in zip(gpu_keys, reading.gpus, strict=True)
        ],
        "unread_gpus": unread_gpus(sample),
        "host": {
            "total": sample.host.total,
            "available": sample.host.available,
            "used": sample.host.used,
            "source": sample.host.source,
        },
        "kernels": rows,
        "other_processes": {"gpu_memory": dict(attribution.other) if reading.available else {}},
        "history": {
            "timestamps": [p.timestamp for p in history],
            "gpu_memory_used": {
                key: [p.gpu_memory_used.get(key) for p in history] for key in gpu_keys
            },
            "host_used": [p.host_used for p in history],
        },
        "notes": list(attribution.notes) if reading.available else [],
        "sample_interval": interval,
        "stale": age > stale_after(interval),
        "sample_age_s": round(age, 3),
    }
