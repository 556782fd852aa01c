"""torch.compile as the fast path uses it: whether it is on ($QWEN3_JUPYTER_COMPILE), where its
compiled kernels persist so the next kernel's first call loads instead of compiling, how many
shapes it may keep, and the counters that show what it compiled or loaded.
"""

from __future__ import annotations

import os

COMPILE_ENV = "QWEN3_JUPYTER_COMPILE"
RECOMPILE_LIMIT = 64
"""torch.compile keeps this many shapes of the step (batch × cache × sampler) before giving up."""


def compile_enabled() -> bool:
    return os.environ.get(COMPILE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def compile_cache_dir() -> str:
    """Where compiled kernels persist across kernels: under the project's cache folder, unless
    the user set TORCHINDUCTOR_CACHE_DIR."""
    from ..embedded import cache_root

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and current != _inductor_default_dir():
        return current
    path = cache_root() / "torch-compile"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only cache folder: inductor's own folder still caches
        return _inductor_default_dir() or ""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return str(path)


def _inductor_default_dir() -> str | None:
    """The folder inductor picks for itself (it sets the variable when first imported)."""
    try:
        from torch._inductor.runtime.runtime_utils import default_cache_dir
    except ImportError:
        return None
    return str(default_cache_dir())


def compiles_so_far() -> int:
    """Graphs torch.compile has produced in this process (a new shape adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_cache_hits() -> int:
    """Compiled graphs this process loaded from the on-disk cache instead of compiling."""
    from torch._dynamo.utils import counters

    return int(counters["aot_autograd"]["autograd_cache_hit"]) + int(
        counters["inductor"]["fxgraph_cache_hit"]
    )


def raise_recompile_limit() -> None:
    """Let torch.compile keep every shape the fast path builds (its default gives up at 8)."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < RECOMPILE_LIMIT:
            setattr(dynamo_config, name, RECOMPILE_LIMIT)
    if getattr(dynamo_config, "accumulated_recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        dynamo_config.accumulated_recompile_limit = RECOMPILE_LIMIT
