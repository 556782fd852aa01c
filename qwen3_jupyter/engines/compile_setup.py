"""torch.compile as the fast path uses it: whether it is on ($QWEN3_JUPYTER_COMPILE) and
tuned ($QWEN3_JUPYTER_TUNE), where its compiled kernels persist so the next kernel's first call
loads instead of compiling, how many shapes it may keep, and the counters that show what it
compiled or loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..env_switches import switch

_log = logging.getLogger(__name__)

COMPILE_ENV = "QWEN3_JUPYTER_COMPILE"
COMPILED_MARKS = "qwen3_jupyter-compiled"
"""Folder in the compile cache with one empty file per step this cache already holds."""
THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"
RECOMPILE_LIMIT = 64
"""torch.compile keeps this many shapes of the step (batch × cache × sampler) before giving up."""


TUNE_ENV = "QWEN3_JUPYTER_TUNE"
TUNING: dict[str, str | int | bool | Callable[..., Any]] = {"coordinate_descent_tuning": True}
"""Inductor's options when tuning is on: it times variants of each Triton kernel's block sizes
and keeps the fastest (on an H200 the batch-1 step took 0.67 of its time, 1.911 ms, and the first
compile 23.8 s instead of about 12 s). Off by default until whole calls and a second kernel's
first call are measured with it."""

COMPILER_IMPORTS = ("torch._dynamo", "torch._inductor.config", "torch._inductor.compile_fx")
"""torch.compile's own modules, which its first compile would otherwise import as it goes."""
GPU_COMPILER_IMPORTS = ("triton", "triton.compiler.compiler", "torch._inductor.codegen.triton")
"""What a first compile for a GPU imports besides: Triton, and inductor's code for it."""


def compile_enabled() -> bool:
    return switch(COMPILE_ENV, default=True)


def tuning_enabled() -> bool:
    """$QWEN3_JUPYTER_TUNE=1: compile the decode step with `TUNING` (read when an engine starts,
    like $QWEN3_JUPYTER_COMPILE)."""
    return switch(TUNE_ENV, default=False)


def import_compiler(device: str = "cpu") -> None:
    """Import torch.compile whole (`COMPILER_IMPORTS`, every dynamo backend and, for a CUDA
    `device` where Triton is installed, `GPU_COMPILER_IMPORTS`), with a kernel interrupt held
    until it is in, then delivered.

    Why: a first compile imports these as it goes (1.4 s of it on 2 CPU cores), and an
    interrupt landing in one of those imports leaves their registrations half made. Every later
    compile in that kernel then fails ("both a fallback and a decomp for same op:
    aten.mm.default", measured with interrupts 1.0-1.2 s into a first compile on `tiny`), and
    the fast path is off until a restart and a slow model reload. (Triton's part is by the same
    reasoning, not yet seen to fail on a GPU.)

    A module that fails to import (a Triton that does not match torch, say) is left for the
    compile to meet, where a failed compile is handled: one line, the step uncompiled."""
    import torch

    from ..interrupts import interrupt_deferred

    modules = list(COMPILER_IMPORTS)
    if device.startswith("cuda") and importlib.util.find_spec("triton") is not None:
        modules += GPU_COMPILER_IMPORTS
    with interrupt_deferred():  # nothing may raise inside: a held interrupt would be lost
        for name in modules:
            if name not in sys.modules:
                try:
                    importlib.import_module(name)
                except Exception:
                    _log.debug("torch.compile's %s did not import", name, exc_info=True)
        try:
            torch._dynamo.list_backends()  # imports each backend's module (each registers a name)
        except Exception:
            _log.debug("torch.compile's backends did not import", exc_info=True)


def compile_cache_dir() -> str:
    """Where compiled kernels persist across kernels: under the project's cache folder, unless
    the user set TORCHINDUCTOR_CACHE_DIR (made here; used only inside `compile_settings`)."""
    from ..embedded import cache_root

    current = os.environ.get(CACHE_ENV)
    if current and current != _inductor_default_dir():
        return current
    path = cache_root() / "torch-compile"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only cache folder: inductor's own folder still caches
        return _inductor_default_dir() or ""
    return str(path)


CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
RECOMPILE_LIMITS = ("recompile_limit", "cache_size_limit")
ACCUMULATED_LIMITS = ("accumulated_recompile_limit", "accumulated_cache_size_limit")


@contextlib.contextmanager
def compile_settings() -> Iterator[None]:
    """The fast path's compile settings, while its step compiles and nowhere else: its cache
    folder ($TORCHINDUCTOR_CACHE_DIR) and a recompile limit that keeps every shape it builds
    (torch's default gives up at 8). Why: both were set for the whole process, for good, so the
    user's own torch.compile went on past the limit they set (or torch's 8) without its
    warning, and wrote its kernels into this package's folder, even after %unload_ext."""
    import torch._dynamo.config as dynamo_config

    cache, before = compile_cache_dir(), os.environ.get(CACHE_ENV)
    wanted = {name: RECOMPILE_LIMIT for name in RECOMPILE_LIMITS + ACCUMULATED_LIMITS}
    limits = {name: getattr(dynamo_config, name) for name in wanted if hasattr(dynamo_config, name)}
    try:
        if cache:
            os.environ[CACHE_ENV] = cache
        for name, value in limits.items():
            if isinstance(value, int) and value < wanted[name]:
                setattr(dynamo_config, name, wanted[name])
        yield
    finally:
        for name, value in limits.items():
            setattr(dynamo_config, name, value)
        if before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = before


def remove_empty_objects(cache: str) -> int:
    """Delete the 0-byte shared objects in the compile cache `cache`; how many there were.

    Why: a C++ compile killed mid-write (an interrupt reached g++ before `children_spared`, an
    out-of-memory kill) leaves an empty `.so` that inductor takes for a cached kernel, and
    every later compile of that step fails ("file too short"), in every kernel."""
    removed = 0
    with contextlib.suppress(OSError):
        for path in Path(cache).rglob("*.so"):
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()
                    removed += 1
    return removed


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


def _mark(step: str) -> Path:
    """The file saying the compiled `step` (shape, model, dtype, device) is in the cache; torch
    and Triton versions are part of its name, as they are of inductor's own cache keys."""
    import torch

    key = f"{torch.__version__}|{_triton_version()}|{step}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(compile_cache_dir()) / COMPILED_MARKS / digest


def _triton_version() -> str:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "no triton"


def _disk_cache_on() -> bool:
    """Whether inductor keeps compiled graphs on disk (TORCHINDUCTOR_FX_GRAPH_CACHE=0 turns it
    off): without it a mark would promise a load that is really a compile."""
    import torch._inductor.config as inductor_config

    return bool(getattr(inductor_config, "fx_graph_cache", True))


def remember_compiled(step: str) -> None:
    """Mark `step` as cached, so the next kernel loads it in-process (`compiling`)."""
    if not _disk_cache_on():
        return
    mark = _mark(step)
    with contextlib.suppress(OSError):  # a read-only cache: the next kernel loads it in a pool
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()


@contextlib.contextmanager
def compiling(step: str) -> Iterator[bool]:
    """Around the first run of compiled `step`: where this cache already holds it, compile with
    one thread. Inductor otherwise starts a pool of worker processes (one per core, each
    importing torch) on a GPU and hands kernels to it to load (`AsyncCompile.triton`), so a
    second kernel's first call can wait for that start-up to load what it could read itself
    (not yet timed on a GPU: `bench speed` prints the first call's parts). A step not
    cached keeps the pool (compiling its kernels in parallel is what the pool is for); so does a
    user's own $TORCHINDUCTOR_COMPILE_THREADS. Yields whether the step was marked cached."""
    import torch._inductor.config as inductor_config

    cached = _disk_cache_on() and _mark(step).exists()
    # a torch without the setting (renamed, say) compiles as it would have: never a failure
    before = getattr(inductor_config, "compile_threads", None)
    known = hasattr(inductor_config, "compile_threads")
    serial = cached and known and THREADS_ENV not in os.environ
    if serial:
        inductor_config.compile_threads = 1
    try:
        with compile_settings():
            yield cached
    finally:
        if serial:
            inductor_config.compile_threads = before
