"""What the two in-kernel engines (eager and fast) share: the loaded model and batching.

Both batch through `batching.run_batches` (left-padded chunks, out-of-memory back-off, JSON
lines as chunks finish, interrupt-safe); they differ only in how one chunk is decoded.
"""

from __future__ import annotations

import functools
import os
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from .base import Engine, EngineError

if TYPE_CHECKING:
    from ..batching import BatchResults
    from ..generation import GenerationOptions, Result
    from ..models import LoadedModel


Params = ParamSpec("Params")
Returned = TypeVar("Returned")
EngineSelf = TypeVar("EngineSelf")


def holds_model(
    activity: str, needs_model: bool = True
) -> Callable[
    [Callable[Concatenate[EngineSelf, Params], Returned]],
    Callable[Concatenate[EngineSelf, Params], Returned],
]:
    """Run the method holding the kernel's model (`ModelHolder.in_use`): a call from another
    thread meanwhile gets a one-line ModelBusy instead of sharing the decode buffers. With
    `needs_model`, an engine whose model was unloaded or replaced since it was made (an
    `inference()` block's, across a switch) says so in one line, not a NoneType traceback."""

    def wrap(
        method: Callable[Concatenate[EngineSelf, Params], Returned],
    ) -> Callable[Concatenate[EngineSelf, Params], Returned]:
        @functools.wraps(method)
        def run(self: EngineSelf, *args: Params.args, **kwargs: Params.kwargs) -> Returned:
            from ..models import HOLDER, meta_default_device

            refused = meta_default_device() if needs_model else None
            if refused:
                raise EngineError(refused)
            with HOLDER.in_use(activity):
                loaded = getattr(self, "loaded", None)
                if needs_model and loaded is not None and loaded.model is None:
                    raise EngineError(
                        f"{loaded.name} was unloaded or replaced since this was started: ask "
                        "again (a `with inference()` block: open a new one)"
                    )
                return method(self, *args, **kwargs)

        return run

    return wrap


def decodes(
    method: Callable[Concatenate[EngineSelf, Params], Returned],
) -> Callable[Concatenate[EngineSelf, Params], Returned]:
    """Run the method as one decode (`ModelUse.decoding`): a generation started from inside it
    (by its streaming callback) gets a one-line ModelBusy instead of sharing its cache."""

    @functools.wraps(method)
    def run(self: EngineSelf, *args: Params.args, **kwargs: Params.kwargs) -> Returned:
        from ..models import HOLDER

        with HOLDER.use.decoding():
            return method(self, *args, **kwargs)

    return run


PREFIX_CHARS_PER_POSITION = 8
"""Characters per position of the model in the first part of a long prompt counted before the
whole (`LocalEngine.check_text_early`): English runs 3-5 characters a token."""
PREFIX_SLACK_TOKENS = 64
"""Tokens the cut at the first part's end may add (a word cut into pieces): not counted."""


def position_limit(config: object) -> int:
    """The positions a model is configured for (0: unknown): `max_position_embeddings`, or what a
    RoPE scaling extends it to (Qwen3's model card adds YaRN with factor 4 over 32,768 for
    131,072 tokens, leaving `max_position_embeddings` at 40,960)."""
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    for name in ("rope_parameters", "rope_scaling"):
        scaling = getattr(config, name, None)
        if isinstance(scaling, dict) and scaling.get("factor"):
            base = int(scaling.get("original_max_position_embeddings") or limit)
            limit = max(limit, int(base * float(scaling["factor"])))
    return limit


class LocalEngine(Engine):
    """An engine that decodes with the model loaded in this kernel."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def device(self) -> str:
        return self.loaded.device

    def options_for_model(self, options: GenerationOptions) -> GenerationOptions:
        """Thinking as the model's chat template decides it, where it does (`thinking_mode`):
        an Instruct-2507 never thinks, a Thinking-2507 always does."""
        from ..thinking_mode import for_model

        return for_model(options, self.loaded.tokenizer)

    def check_positions(
        self,
        prompt_tokens: int,
        options: GenerationOptions,
        what: str = "prompt",
        chat: bool = False,
        at_least: bool = False,
    ) -> None:
        """Raise EngineError when the prompt and the answer asked for do not fit the model's
        positions: generate itself would go on past them (for --max-new-tokens 99999999, for
        hours), and the fast path's cache could not hold them. `at_least`: the count is of the
        prompt's first part only (`check_text_early`)."""
        limit = position_limit(getattr(self.loaded.model, "config", None))
        if not limit or prompt_tokens + options.max_new_tokens <= limit:
            return
        shorten = "shorten it (--reset clears a --chat conversation)" if chat else "shorten it"
        counted = f"at least {prompt_tokens:,} tokens" if at_least else f"{prompt_tokens:,} tokens"
        raise EngineError(
            f"{what} ({counted}) + --max-new-tokens {options.max_new_tokens:,} "
            f"exceeds the {limit:,} positions of {self.model_name}: {shorten} or lower "
            "--max-new-tokens"
        )

    def check_text_early(
        self, text: str, options: GenerationOptions, what: str = "prompt", chat: bool = False
    ) -> None:
        """Refuse a text whose first part alone is beyond the model's positions before
        tokenizing all of it: a 48 MB prompt (a table put in with `--vars {df.to_csv()}`) took
        35-50 s to tokenize only to be refused. A few characters make a token, so a text
        `PREFIX_CHARS_PER_POSITION` times longer than the positions nearly always has more."""
        limit = position_limit(getattr(self.loaded.model, "config", None))
        prefix = (limit + PREFIX_SLACK_TOKENS) * PREFIX_CHARS_PER_POSITION
        if not limit or len(text) <= prefix:
            return
        tokens = len(self.loaded.tokenizer(text[:prefix])["input_ids"]) - PREFIX_SLACK_TOKENS
        self.check_positions(tokens, options, what=what, chat=chat, at_least=True)

    @abstractmethod
    def generate_chunk(
        self, prompts: list[str], options: GenerationOptions, budget: int | None
    ) -> tuple[list[Result], int]:
        """One left-padded batch: its Results and the peak generation tensor bytes it held.
        Out of memory raises GenerationOOM after the memory was released."""

    @holds_model("a batch")
    def generate_batch(
        self,
        prompts: Sequence[str],
        options: GenerationOptions,
        *,
        batch_size: int = 4,
        concurrency: int | None = None,
        memory_budget: int | None = None,
        out: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> BatchResults:
        from ..batching import run_batches
        from ..generation import prompt_text

        prompts = list(prompts)
        options = self.options_for_model(options)
        tokenizer = self.loaded.tokenizer
        for index, prompt in enumerate(prompts):  # all of them before any is generated
            text = prompt_text(tokenizer, prompt, options)
            try:
                self.check_text_early(text, options, what=f"prompt {index}")
                tokens = len(tokenizer(text)["input_ids"])
                self.check_positions(tokens, options, what=f"prompt {index}")
            except EngineError as exc:
                exc.prompt_index = index  # a --file run names its line (the magic)
                raise
        return run_batches(
            self.generate_chunk,
            self.device,
            list(prompts),
            batch_size,
            options,
            memory_budget,
            out,
            progress,
            model=self.loaded.name,
        )
