"""`with inference() as chat:` — generate inside a block that always cleans up after itself.

    with qwen3_jupyter.inference(model="tiny", greedy=True) as chat:
        print(chat("Why is the sky blue?").answer)
    chat.report.summary()   # what the cleanup on exit freed

The model stays loaded (it is the kernel's one model); what generation and the block left
behind is released on exit, even when the block raises — the exception still propagates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .cleanup import CleanupReport, cleanup, release_traceback_locals
from .generation import GenerationOptions, Result
from .models import LoadedModel
from .session import SESSION

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(GenerationOptions))


class Chat:
    """Calls the block's model: `chat(prompt, **options) -> Result`.

    Options are GenerationOptions fields (think, temperature, top_p, top_k, max_new_tokens,
    seed, system, greedy); those given to `inference()` are the defaults, a call's own win.
    `chat=True` continues the kernel's conversation (as `%qwen3 --chat`).
    """

    def __init__(self, loaded: LoadedModel, defaults: dict[str, Any]) -> None:
        self._loaded: LoadedModel | None = loaded
        self.defaults = dict(defaults)
        self.model_name = loaded.name
        self.report: CleanupReport | None = None

    def __call__(
        self,
        prompt: str,
        *,
        chat: bool = False,
        on_text: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Result:
        if self._loaded is None:
            raise RuntimeError("this chat ended with its `with inference()` block; open a new one")
        _check_options(options)
        merged = GenerationOptions(**{**self.defaults, **options})
        return SESSION.ask(self._loaded, prompt, merged, chat=chat, on_text=on_text)

    def close(self) -> None:
        """Forget the model (the kernel keeps it loaded; this object no longer reaches it)."""
        self._loaded = None

    def __repr__(self) -> str:
        state = "open" if self._loaded is not None else "closed"
        return f"<qwen3 chat with {self.model_name} ({state})>"


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        allowed = ", ".join(sorted(_OPTION_NAMES))
        raise TypeError(f"unknown generation option {unknown[0]!r}; use one of {allowed}")


@contextmanager
def inference(
    model: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    verbose: bool = False,
    **options: Any,
) -> Iterator[Chat]:
    """A block in which `chat(prompt)` generates with `model`, cleaned up on exit.

    `model` None uses the model already loaded in this kernel, else the configured default
    ($QWEN3_JUPYTER_MODEL, then Qwen/Qwen3-1.7B). On exit — normal or by an exception —
    `cleanup()` runs (output cache, last exception, generation leftovers, cycles, allocator
    cache) and its report is `chat.report`; the model is not unloaded. When the block raises,
    the finished frames of its traceback drop their locals first, so the tensors they held are
    freed now, while the exception itself still propagates with its traceback.
    """
    _check_options(options)
    loaded = SESSION.loaded
    if loaded is None or model is not None or device is not None or dtype is not None:
        loaded = SESSION.load(SESSION.choice(model, device, dtype))
    chat = Chat(loaded, options)
    del loaded
    try:
        yield chat
    except BaseException as exc:
        release_traceback_locals(exc)
        raise
    finally:
        chat.close()
        chat.report = cleanup(verbose=verbose)
