"""Engines: what generates. The magics, batching, `inference()` and the cleanup see only `Engine`.

- `eager`: transformers `generate` with a dynamic cache (nothing kept between calls).
- `fast`: a static KV cache and a compiled decode step, replayed as a CUDA graph on GPUs; the
  cache and graphs are kept between calls on purpose, and say so.
- `remote`: an OpenAI-compatible server (vLLM, SGLang, `transformers serve`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..asked import CONFIG, ENVIRONMENT, Asked
from .base import Engine, EngineError, KeptMemory, describe_kept
from .urls import api_base, mask_url, with_scheme

if TYPE_CHECKING:
    from ..models import LoadedModel

__all__ = [
    "DECODE_ENV",
    "DECODE_MODES",
    "SERVER_ENV",
    "Engine",
    "EngineError",
    "KeptMemory",
    "check_decode",
    "check_server",
    "decode_mode",
    "describe_kept",
    "local_engine",
    "server_source",
    "server_url",
]

DECODE_ENV = "QWEN3_JUPYTER_DECODE"
DECODE_MODES = ("auto", "fast", "eager")
SERVER_ENV = "QWEN3_JUPYTER_SERVER"


def check_decode(flag: str | None, configured: str | None) -> str:
    """The decode path asked for ('auto' where nothing asks): the flag, then
    $QWEN3_JUPYTER_DECODE, then the config option. A bad one is refused naming where it was
    set, and before any model loads: a typo in `%config Qwen3Magics.decode` had unloaded the
    kernel's model for the one a refused call named."""
    asked = Asked.first("decode", flag, DECODE_ENV, configured)
    if asked is None:
        return "auto"
    if asked.value.lower() not in DECODE_MODES:
        raise EngineError(f"{asked.says()} is not a decode mode: one of {', '.join(DECODE_MODES)}")
    return asked.value.lower()


def decode_mode(flag: str | None, configured: str | None, device: str) -> str:
    """'fast' or 'eager' (`check_decode`'s choice); 'auto' (the default) is fast on CUDA and
    eager on the CPU, where compiling buys little."""
    wanted = check_decode(flag, configured)
    if wanted == "auto":
        return "fast" if device.startswith("cuda") else "eager"
    return wanted


def server_url(flag: str | None, configured: str | None = None) -> str | None:
    """The server to call, if any: the flag, then $QWEN3_JUPYTER_SERVER, then the config. An
    empty flag (`--server ""`, `server=""`) names none: this call uses the model in this kernel
    even where the environment or the config name a server (there was no way to say so)."""
    asked = _server_asked(flag, configured)
    return None if asked is None else with_scheme(asked.value)


def _server_asked(flag: str | None, configured: str | None) -> Asked | None:
    if flag is not None and not flag.strip():
        return None
    return Asked.first("server", flag, SERVER_ENV, configured)


def check_server(flag: str | None, configured: str | None) -> None:
    """Refuse a server setting that is no http(s) URL, naming where it was set: one set by
    `%config Qwen3Magics.server` in an earlier cell was refused as "--server …", a flag the
    user never typed (api_call words the flag as a Python caller's `server=`)."""
    asked = _server_asked(flag, configured)
    if asked is None:
        return
    value = repr(mask_url(asked.value))
    if asked.where == ENVIRONMENT:
        named = f"${SERVER_ENV}={value}"
    elif asked.where == CONFIG:
        named = f"%config Qwen3Magics.server = {value}"
    else:
        named = f"--server {value}"
    api_base(with_scheme(asked.value), named)


def server_source(flag: str | None) -> str:
    """Where the server a call would use came from, for a message about it: the user may
    never have typed --server (a `%config` line in an earlier cell set it)."""
    if flag:
        return "--server"
    where = (
        f"${SERVER_ENV}"
        if (os.environ.get(SERVER_ENV) or "").strip()
        else "%config Qwen3Magics.server"
    )
    return f'the server set by {where} (--server "" uses the model in this kernel)'


def local_engine(
    loaded: LoadedModel,
    mode: str,
    kept: Engine | None,
    notify: Callable[[str], None],
) -> Engine:
    """The engine for `loaded` in `mode`: the kept fast engine when it serves this model, a new
    one otherwise, or the eager one. A model the fast path does not implement is served eagerly,
    with a one-line notice."""
    from .eager import EagerEngine

    if mode == "fast":
        from .fast import FastEngine
        from .qwen3_step import UnsupportedModel

        if isinstance(kept, FastEngine) and kept.loaded is loaded:
            return kept
        if kept is not None:
            kept.close()
        try:
            return FastEngine(loaded, notify=notify)
        except UnsupportedModel as exc:
            notify(f"fast decode unavailable ({exc}); decoding eagerly")
    return EagerEngine(loaded)
