"""`with inference() as chat:` — generate inside a block that always cleans up after itself.

    with qwen3_jupyter.inference(model="tiny", greedy=True) as chat:
        print(chat("Why is the sky blue?").answer)
    chat.report.summary()   # what the cleanup on exit freed

The model stays loaded (it is the kernel's one model); what generation and the block left
behind is released on exit, even when the block raises — the exception still propagates.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

from .api_call import api_call
from .cleanup import CleanupReport, cleanup
from .display import PREFIX, footer, kept_part
from .engines import Engine
from .engines.local import LocalEngine
from .generation import SAMPLING_OPTIONS, GenerationOptions, Result, check_arguments
from .magic_args import refuse_unknown_keywords
from .model_use import holding
from .python_words import in_python_words
from .refusals import on_purpose, shown_at_the_callers_line
from .release_actions import release_traceback_locals
from .session import SESSION

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(GenerationOptions))


STOPPED_BLOCK = (
    "stopped by qwen3_jupyter.stop() (or %qwen3 --stop): this inference() block's later chat() "
    "calls do not start; open a new block to ask again"
)


class Chat:
    """Calls the block's model: `chat(prompt, **options) -> Result`.

    Options are GenerationOptions fields (think, temperature, top_p, top_k, max_new_tokens,
    seed, system, greedy: see help(qwen3_jupyter.GenerationOptions)); those given to
    `inference()` are the defaults, a call's own win.
    `chat=True` continues the kernel's conversation (as `%qwen3 --chat`;
    `qwen3_jupyter.reset_chat()` clears it, and `system=""` its system prompt). `on_text(text)` is
    called with the whole text so far (thinking included, as the model writes it), about every
    0.1 s while it streams; its last call has the whole text.
    """

    def __init__(self, engine: Engine, defaults: dict[str, Any]) -> None:
        self._engine: Engine | None = engine
        self.defaults = dict(defaults)
        self.model_name = engine.model_name
        self.report: CleanupReport | None = None
        self._stopped = False
        """A call of this block in a thread was stopped (`stop()`, `%qwen3 --stop`): its later
        calls do not start. In the main thread an interrupt ends the cell's later calls
        (CELL_INTERRUPTS); a thread's loop of chat() calls went on after the stop."""

    @shown_at_the_callers_line
    def __call__(
        self,
        prompt: str,
        *,
        chat: bool = False,
        on_text: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Result:
        if self._engine is None:
            raise RuntimeError("this chat ended with its `with inference()` block; open a new one")
        if self._stopped:
            raise on_purpose(KeyboardInterrupt(STOPPED_BLOCK))
        _check_prompt(prompt)
        refuse_unknown_keywords(options, _CHAT_KEYWORDS)
        check_arguments(flags={"chat": chat})
        if on_text is not None and not callable(on_text):
            raise TypeError(f"on_text={on_text!r}: must be a function of the new text, or None")
        merged = GenerationOptions(**_merged(self.defaults, options))
        local = isinstance(self._engine, LocalEngine)
        with (
            api_call() as call,  # outside the hold: a ModelBusy is worded for a Python caller
            holding(local, "an inference() chat"),
            call.watching(self._engine),
        ):
            result = SESSION.ask(self._engine, prompt, merged, chat=chat, on_text=on_text)
            call.closing = in_python_words(footer(result).removeprefix(f"{PREFIX} "))
            if result.stop_reason == "interrupted":
                call.notify(
                    f"chat interrupted: partial {kept_part(result)} kept "
                    f"({result.completion_tokens} tokens)"
                )
                # In a thread only a stop() ends a call early: the rest of the block is stopped.
                self._stopped = threading.current_thread() is not threading.main_thread()
            return result

    def close(self) -> None:
        """Forget the engine (the kernel keeps the model loaded; this object no longer reaches
        it)."""
        self._engine = None

    def __repr__(self) -> str:
        state = "open" if self._engine is not None else "closed"
        return f"<qwen3 chat with {self.model_name} ({state})>"


def _check_prompt(prompt: object) -> None:
    """One line instead of the chat template's own error three frames deep in jinja."""
    if isinstance(prompt, str):
        if not prompt.strip():  # the model would answer nothing in particular, 512 tokens long
            raise ValueError(f"the prompt is empty ({prompt!r}): ask chat() something")
        return
    if isinstance(prompt, (list, tuple)):
        raise TypeError(
            "chat() answers one prompt: for a list use qwen3_jupyter.generate_batch(prompts)"
        )
    raise TypeError(f"the prompt is {prompt!r} ({type(prompt).__name__}), not text")


_CHAT_KEYWORDS = _OPTION_NAMES | {"chat", "on_text"}
_BLOCK_KEYWORDS = _OPTION_NAMES | {"model", "device", "dtype", "decode", "server", "verbose"}


class InferenceBlock(AbstractContextManager[Chat]):
    """What `inference()` returns: a `with` block, and nothing else.

    Why: the generator context manager it was could also be called, as a decorator, so
    `inference(model="tiny")("hi")` returned a function and silently did nothing.
    """

    def __init__(self, block: AbstractContextManager[Chat]) -> None:
        self._block = block

    @shown_at_the_callers_line
    def __enter__(self) -> Chat:
        return self._block.__enter__()

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool | None:
        return self._block.__exit__(kind, value, traceback)

    @shown_at_the_callers_line
    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "inference() opens a block, it does not answer: with qwen3_jupyter.inference(...) "
            'as chat: chat("hi")'
        )

    def __repr__(self) -> str:
        """What a cell that ends with `inference(...)` shows: how to use it, not an address."""
        return '<qwen3 inference block: with qwen3_jupyter.inference(...) as chat: chat("hi")>'


def _merged(defaults: dict[str, Any], call: dict[str, Any]) -> dict[str, Any]:
    """A chat call's options over its block's, the call's own winning, conflicts included: a
    call's `greedy=True` sets the block's sampling values aside, and a call's own sampling value
    sets the block's `greedy=True` aside (refusing them, as a block's own conflict is refused,
    would make a block's defaults impossible to change per call)."""
    kept = dict(defaults)
    if call.get("greedy"):
        for name in SAMPLING_OPTIONS:
            kept.pop(name, None)
    elif "greedy" not in call and any(call.get(name) is not None for name in SAMPLING_OPTIONS):
        kept.pop("greedy", None)
    return {**kept, **call}


@shown_at_the_callers_line
def inference(
    model: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    decode: str | None = None,
    server: str | None = None,
    verbose: bool = False,
    **options: Any,
) -> InferenceBlock:
    """A block in which `chat(prompt)` generates with `model`, cleaned up on exit.

    `model` None uses the model already loaded in this kernel, else the configured default
    ($QWEN3_JUPYTER_MODEL, then `%config Qwen3Magics.model`, then Qwen/Qwen3-1.7B). `decode`
    picks the in-kernel path ('fast', 'eager'; default fast on CUDA); `server` (or
    $QWEN3_JUPYTER_SERVER) asks an OpenAI-compatible server instead, `model` then naming the
    served model. `device`, `dtype`, `decode` and `server` likewise come from the argument, then
    the environment variable, then `%config Qwen3Magics.<name>` when the extension is loaded,
    then the default, as for `%qwen3`. On exit — normal or
    by an exception — `cleanup()` runs (output cache, last exception, generation leftovers,
    cycles, allocator cache) and its report is `chat.report`; the model is not unloaded. When
    the block raises,
    the finished frames of its traceback drop their locals first, so the tensors they held are
    freed now, while the exception itself still propagates with its traceback.
    """
    if isinstance(model, str) and _looks_like_a_prompt(model):
        short = model if len(model) <= 40 else model[:39] + "…"
        raise ValueError(
            f"inference() takes a model, not a prompt ({short!r}): it opens a block, "
            f"with qwen3_jupyter.inference() as chat: chat({short!r}) (or %qwen3 {short})"
        )
    return InferenceBlock(_block(model, device, dtype, decode, server, verbose, options))


def _looks_like_a_prompt(model: str) -> bool:
    """Words with spaces that name no folder: `inference("Why is the sky blue?")` made a block
    that was never entered, so the question went nowhere, without a word (it fails at once
    now, not when a `with` loads a "model" of that name)."""
    words = model.strip()
    return any(c.isspace() for c in words) and not Path(words).expanduser().exists()


@contextmanager
def _block(
    model: str | None,
    device: str | None,
    dtype: str | None,
    decode: str | None,
    server: str | None,
    verbose: bool,
    options: dict[str, Any],
) -> Iterator[Chat]:
    """The block itself: arguments checked on entry, the engine, the chat, the cleanup."""
    refuse_unknown_keywords(options, _BLOCK_KEYWORDS)
    check_arguments(
        {"model": model, "device": device, "dtype": dtype, "decode": decode, "server": server},
        {"verbose": verbose},
    )
    GenerationOptions(**options)  # a bad value fails here, before a model is loaded
    with api_call() as call:
        engine = call.engine(model=model, device=device, dtype=dtype, decode=decode, server=server)
    chat = Chat(engine, options)
    del engine
    try:
        yield chat
    except BaseException as exc:
        release_traceback_locals(exc)
        raise
    finally:
        chat.close()
        if not sys.is_finalizing():
            chat.report = cleanup(verbose=verbose)
        # else: a block entered by hand (`cm.__enter__()`) and never exited, closed as the
        # interpreter shuts down: its imports fail then ("sys.meta_path is None"), printed as
        # an ignored exception, and the process is giving all of its memory back anyway.
