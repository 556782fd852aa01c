"""What every engine shares: options, the Result, prompts and chat history, the thinking split,
end-of-sequence ids, the memory budget and the out-of-memory message, the post-call release.

The engines themselves (eager, fast, remote) live in `engines/`; this module knows none of them.
"""

from __future__ import annotations

import gc
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .memory import format_bytes, process_rss
from .models import LoadedModel, release_allocator_cache
from .out_of_memory import out_of_memory_reason

THINK_END = "</think>"
THINK_START = "<think>"
# Qwen3's recommended sampling (model card): thinking vs non-thinking mode.
THINKING_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
NON_THINKING_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
DEFAULT_MAX_NEW_TOKENS = 512


class GenerationOOM(Exception):
    """The device ran out of memory during generation; memory has already been released.

    `hint` is what would help, for whoever words the final message (a batch that backs off
    retries first, and says it only when even one prompt at a time does not fit). `results`:
    what a batch finished before it stopped (a `BatchResults`), so that work is not lost."""

    def __init__(self, message: str, hint: str = "", results: Any = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.results = results


class ChunkInterrupted(KeyboardInterrupt):
    """A batch's chunk was interrupted while decoding: what its tensors held at their peak
    comes with the interrupt, for the batch's report (an interrupted batch said "peak
    generation tensors 0 B" after seconds of decoding with a 2×2048 cache)."""

    def __init__(self, peak_tensor_bytes: int) -> None:
        super().__init__()
        self.peak_tensor_bytes = peak_tensor_bytes


SEED_LIMIT = 2**63 - 1
"""torch.manual_seed takes at most 64 bits; a larger seed failed deep inside torch."""


def _whole(value: Any) -> bool:
    """An integer that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _flag(value: Any) -> bool:
    """Only True or False: a string like 'no' is truthy and would silently mean yes. numpy's
    own (a DataFrame row's `think`) is one too: it was refused as "must be True or False"."""
    return isinstance(value, bool) or _numpy_bool(value)


def _numpy_bool(value: Any) -> bool:
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ in ("bool_", "bool")


def _text(value: Any) -> bool:
    return isinstance(value, str)


OPTION_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "think": (_flag, "True or False"),
    "temperature": (_number, "a number"),
    "top_p": (_number, "a number"),
    "top_k": (_whole, "a whole number"),
    "max_new_tokens": (_whole, "a whole number"),
    "seed": (_whole, "a whole number"),
    "system": (_text, "text"),
    "greedy": (_flag, "True or False"),
    "ignore_eos": (_flag, "True or False"),
}
"""What type each option must be, checked before its rule: a comparison of the wrong type
raised deep in the call ('>=' not supported between 'str' and 'int'), a truthy string passed."""

OPTIONAL = frozenset({"temperature", "top_p", "top_k", "seed", "system"})
"""Options for which None means Qwen3's recommended value (or none)."""

OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (lambda value: 0 < value < math.inf, "must be > 0 and finite"),
    "top_p": (lambda value: 0 < value <= 1, "must be in (0, 1]"),
    "top_k": (lambda value: value >= 1, "must be >= 1"),
    "max_new_tokens": (lambda value: value >= 1, "must be >= 1"),
    "seed": (lambda value: 0 <= value <= SEED_LIMIT, "must be from 0 to 2**63-1"),
}
"""What each numeric option must be: one table for the magic's flags and the Python API."""


def wrong_kinds(values: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(name, value, kind) for every option in `values` of the wrong type (None is unset where
    the option is optional; absent names are not checked)."""
    for name, (valid, kind) in OPTION_KINDS.items():
        if name not in values:
            continue
        value = values[name]
        if value is None and name in OPTIONAL:
            continue
        if not valid(value):
            yield name, value, kind


def broken_rules(values: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(name, value, rule) for every option in `values` that breaks its rule (None is unset;
    a value of the wrong type is `wrong_kinds`' to report, never compared here)."""
    for name, (valid, rule) in OPTION_RULES.items():
        value = values.get(name)
        if value is not None and _number(value) and not valid(value):
            yield name, value, rule


def check_arguments(
    texts: Mapping[str, object] | None = None, flags: Mapping[str, object] | None = None
) -> None:
    """Refuse an API argument of the wrong type in one line, before any model is touched:
    `texts` must be str or None (`model=123` failed in the model lookup, `.lower()` of an int),
    `flags` True or False (a truthy 'no' would mean yes)."""
    for name, value in (texts or {}).items():
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name}={value!r} ({type(value).__name__}): must be text or None")
    for name, value in (flags or {}).items():
        if not _flag(value):
            raise TypeError(f"{name}={value!r} ({type(value).__name__}): must be True or False")


SAMPLING_OPTIONS = ("temperature", "top_p", "top_k")
"""The options only sampling uses: with greedy=True they would silently do nothing."""


@dataclass(frozen=True)
class GenerationOptions:
    """What a caller may set for one generation (the keyword options of `generate_batch`,
    `inference()` and `chat()`); None means Qwen3's recommended value.

    think: the model thinks first, in <think>…</think> (Qwen3's default, True); the Result
        splits it into `.thinking` and `.answer`.
    temperature, top_p, top_k: sampling; None takes Qwen3's recommended ones (0.6, 0.95, 20
        when thinking; 0.7, 0.8, 20 when not).
    max_new_tokens: the most tokens to write, thinking included (512).
    seed: repeatable sampling; the notebook's own random state is put back after the call.
    system: a system prompt.
    greedy: always the likeliest token, the same answer every time (no temperature, top_p or
        top_k with it).
    ignore_eos: write max_new_tokens whatever the model says (for speed measurements).
    """

    think: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None
    system: str | None = None
    greedy: bool = False
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        """Refuse values no decoder can use, in words, before anything runs (transformers would
        raise deep in `generate`, or a decode loop would never start)."""
        for name, value, kind in wrong_kinds(vars(self)):
            unset = " or None" if name in OPTIONAL else ""
            raise TypeError(f"{name}={value!r} ({type(value).__name__}): must be {kind}{unset}")
        for name, value, rule in broken_rules(vars(self)):
            extra = " (greedy=True decodes deterministically)" if name == "temperature" else ""
            raise ValueError(f"{name}={value!r}: {rule}{extra}")
        sampling = [
            f"{name}={getattr(self, name)!r}"
            for name in SAMPLING_OPTIONS
            if getattr(self, name) is not None
        ]
        if self.greedy and sampling:  # as the magic refuses --greedy --temperature 0.3
            raise ValueError(
                f"greedy=True always takes the likeliest token, so {' and '.join(sampling)} "
                "would do nothing: drop one of them"
            )
        for name, value in vars(self).items():  # numpy's int64 and the like become plain
            if _numpy_bool(value):  # values a server's JSON can carry
                object.__setattr__(self, name, bool(value))
            elif _whole(value) and type(value) is not int:
                object.__setattr__(self, name, int(value))
            elif _number(value) and not isinstance(value, (int, float)):
                object.__setattr__(self, name, float(value))

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for `generate` that select the decoding strategy."""
        if self.greedy:
            return {"do_sample": False}
        base = THINKING_SAMPLING if self.think else NON_THINKING_SAMPLING
        return {
            "do_sample": True,
            "temperature": base["temperature"] if self.temperature is None else self.temperature,
            "top_p": base["top_p"] if self.top_p is None else self.top_p,
            "top_k": base["top_k"] if self.top_k is None else self.top_k,
        }


@dataclass(frozen=True)
class Result:
    """One call's outcome. Plain values only: it holds no tensors and keeps no memory alive.

    `prompt_tokens`: 0 where a server sent no usage figures (the footer then leaves it out).
    `latency_s` and `tokens_per_s`: a batch item's are its batch's (its rows decode together:
    the time that batch took, and this row's tokens over it); the run's throughput is
    `results.report`'s. `engine`: 'eager', 'fast' or 'remote'. `token_ids`: the completion's
    ids as plain ints (empty where the engine does not see ids, e.g. a server).
    `kept_memory`: what the engine keeps between calls on purpose ('decode cache 448 MiB on
    cuda:0, kept for speed'). `error`: why a batch item has no answer (None for every answered
    call).
    """

    prompt: str
    answer: str
    thinking: str
    model: str
    device: str
    think: bool
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    tokens_per_s: float
    peak_memory_bytes: int | None
    memory_kind: str
    stop_reason: str
    thinking_finished: bool
    memory_freed_bytes: int | None = None
    engine: str = "eager"
    time_to_first_token_s: float | None = None
    token_ids: tuple[int, ...] = ()
    kept_memory: str = ""
    error: str | None = None

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == "interrupted"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """`_qwen3` typed alone shows the call's footer and a trimmed answer, not a repr of
        several KB with every token id (the fields are all there to read)."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        """The same lines at a plain `>>>` prompt, in a script's `print(result)` or a log: the
        dataclass repr was ~7 KB, most of it `token_ids`. In the words a Python caller types
        (`max_new_tokens`, not the magic's `--max-new-tokens`): a Result is read as a value."""
        from .display import footer
        from .python_words import in_python_words

        def trimmed(text: str) -> str:
            return text if len(text) <= 200 else text[:200] + f"… ({len(text):,} characters)"

        lines = [f"Result: {in_python_words(footer(self))}"]
        if self.error:
            lines.append(f"error: {in_python_words(self.error)}")
        if self.thinking:
            lines.append(f"thinking: {trimmed(self.thinking)!r}")
        lines.append(f"answer: {trimmed(self.answer)!r}")
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        """A batch item that produced no answer (its error says why)."""
        return self.error is not None

    @property
    def text(self) -> str:
        """Thinking and answer joined back in their tags (`<think>…</think>answer`). Not the
        completion byte for byte: the split trimmed the whitespace around each part, and an
        answer given without a think block gets an empty one. `token_ids` are what was written."""
        if not self.think:
            return self.answer
        closing = THINK_END if self.thinking_finished else ""
        return f"{THINK_START}{self.thinking}{closing}{self.answer}"


@dataclass
class Conversation:
    """The per-kernel chat history used by `--chat`."""

    messages: list[dict[str, str]] = field(default_factory=list)
    system: str | None = None
    """The `--system` of the conversation: given on one `--chat` turn, it stays for the later
    ones (a persona set on the first turn vanished from the second); a new one replaces it, an
    empty one (`--system ""`) clears it."""
    model: str | None = None
    """The model that answered the last kept turn: a turn another model answers is told it
    continues this conversation (it was told only that the old model was unloaded)."""

    @property
    def turns(self) -> int:
        return len(self.messages) // 2

    def continued_by(self, model: str) -> str | None:
        """What to tell a turn `model` answered when the conversation's turns came from another
        model (None: nothing to tell)."""
        if not self.messages or self.model is None or self.model == model:
            return None
        system = " and its --system" if self.system else ""
        plural = "s" if self.turns > 1 else ""
        return (
            f"{model} continued the --chat conversation {self.model} had answered "
            f"({self.turns} turn{plural}{system}); --reset starts a new one"
        )

    def options_for_turn(self, options: GenerationOptions) -> GenerationOptions:
        """`options` with the conversation's system prompt, unless this turn gives its own (an
        empty one, `--system ""`, included: it asks for none)."""
        if options.system is not None or not self.system:
            return options
        return replace(options, system=self.system)

    def keep_turn(
        self, options: GenerationOptions, prompt: str, answer: str, model: str | None = None
    ) -> None:
        """Add a turn that ended (an interrupted one is not kept, nor its `--system`); an empty
        `--system` clears the conversation's. The question and its answer go in one step: an
        interrupt between two appends left a question with no answer for later turns."""
        self.messages.extend(
            ({"role": "user", "content": prompt}, {"role": "assistant", "content": answer})
        )
        if options.system is not None:
            self.system = options.system or None
        self.model = model

    def reset(self) -> None:
        self.messages.clear()
        self.system = None
        self.model = None


def build_messages(
    prompt: str, options: GenerationOptions, history: list[dict[str, str]] | None = None
) -> list[dict[str, str]]:
    """Chat messages for one call: optional system turn, prior turns, then the prompt."""
    messages: list[dict[str, str]] = []
    if options.system:
        messages.append({"role": "system", "content": options.system})
    messages.extend(m for m in (history or []) if m["role"] != "system")
    messages.append({"role": "user", "content": prompt})
    return messages


def split_thinking(text: str, think: bool) -> tuple[str, str, bool]:
    """Split a completion into (thinking, answer, thinking_finished) at the first `</think>`.

    With thinking off the whole text is the answer. With thinking on and no `</think>` yet
    (the token budget ran out mid-thought) everything is thinking and the answer is empty.
    """
    if not think:
        return "", text.strip(), True
    body = text.removeprefix(THINK_START) if text.lstrip().startswith(THINK_START) else text
    body = body.lstrip().removeprefix(THINK_START)
    if THINK_END not in body:
        return body.strip(), "", False
    thinking, answer = body.split(THINK_END, 1)
    return thinking.strip(), answer.strip(), True


def split_completion(text: str, think: bool, stop_reason: str) -> tuple[str, str, bool]:
    """`split_thinking` for a finished completion: text with no `<think>` tag that the model
    ended itself (EOS) is its answer. A model that does not think (Qwen3-*-Instruct-2507, which
    ignores `enable_thinking`) answered so, and its whole answer was filed as "thinking not
    finished"; text the budget cut off stays unfinished thinking."""
    untagged = THINK_START not in text and THINK_END not in text
    if think and stop_reason == "eos" and untagged:
        return "", text.strip(), True
    return split_thinking(text, think)


def prompt_text(
    tokenizer: Any,
    prompt: str,
    options: GenerationOptions,
    history: list[dict[str, str]] | None = None,
) -> str:
    """The chat-templated text of one call (Qwen3's template honours enable_thinking)."""
    return str(
        tokenizer.apply_chat_template(
            build_messages(prompt, options, history),
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=options.think,
        )
    )


def current_memory(device: str) -> tuple[int, str]:
    """What this process holds on `device` now, and what the figure is."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.memory_reserved(torch.device(device))), "CUDA reserved"
    return process_rss(), "host RSS"


def enforce_budget(used: int, budget: int | None) -> None:
    """Raise torch.OutOfMemoryError when generation tensors exceed the memory budget.

    The same error the CUDA allocator raises, so one out-of-memory path (a one-line message for
    a call, a smaller batch for a batch) serves a GPU and a budgeted CPU alike.
    """
    if budget is not None and used > budget:
        import torch

        raise torch.OutOfMemoryError(
            f"generation tensors hold {format_bytes(used)}, over the memory budget of "
            f"{format_bytes(budget)}"
        )


def oom_reason(exc: BaseException) -> str:
    """The first line of an out-of-memory error, short enough for a one-line message."""
    return (
        out_of_memory_reason(exc) or (str(exc).strip().splitlines() or ["out of memory"])[0][:200]
    )


def oom_hint(device: str, reason: str, budget: int | None) -> str:
    """What helps when generation whose cache grows with the answer runs out of memory."""
    if budget is not None and "memory budget" in reason:
        return "raise --memory-budget or lower --max-new-tokens"
    return "lower --max-new-tokens, run %qwen3_clean --verbose to see what holds memory" + (
        "" if device == "cpu" else ", or use --device cpu"
    )


def oom_error(
    device: str,
    new_tokens: int,
    reason: str,
    budget: int | None,
    freed: int | None,
    hint: str | None = None,
) -> GenerationOOM:
    """The one-line GenerationOOM a single call ends with, with what to do about it (`hint`, or
    the advice for a cache that grows with the answer)."""
    if hint is None:
        hint = oom_hint(device, reason, budget)
    return GenerationOOM(
        f"out of memory on {device} after {new_tokens} new tokens ({reason}); "
        f"freed {format_bytes(freed)}: {hint}"
    )


@dataclass(frozen=True)
class Completion:
    """One finished completion as an engine measured it, before it becomes a Result."""

    prompt: str
    text: str
    prompt_tokens: int
    token_ids: tuple[int, ...]
    latency_s: float
    stop_reason: str
    time_to_first_token_s: float | None = None
    completion_tokens: int | None = None
    """Counted by whoever knows best (a server's usage figures); default len(token_ids)."""


def completed_result(
    loaded: LoadedModel,
    options: GenerationOptions,
    completion: Completion,
    engine: str,
    peak_rss: int,
    kept_memory: str = "",
) -> Result:
    """The Result of one finished completion (single or one row of a batch) in this kernel.

    Peak memory is torch's peak allocated bytes on CUDA, else the host RSS the engine sampled.
    """
    import torch

    thinking, answer, finished = split_completion(
        completion.text, options.think, completion.stop_reason
    )
    on_cuda = loaded.device.startswith("cuda")
    if on_cuda:
        peak = int(torch.cuda.max_memory_allocated(torch.device(loaded.device)))
    tokens = (
        completion.completion_tokens
        if completion.completion_tokens is not None
        else len(completion.token_ids)
    )
    latency = completion.latency_s
    return Result(
        prompt=completion.prompt,
        answer=answer,
        thinking=thinking,
        model=loaded.name,
        device=loaded.device,
        think=options.think,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=tokens,
        latency_s=latency,
        tokens_per_s=tokens / latency if latency > 0 else 0.0,
        peak_memory_bytes=peak if on_cuda else peak_rss,
        memory_kind="CUDA allocated" if on_cuda else "host RSS",
        stop_reason=completion.stop_reason,
        thinking_finished=finished,
        engine=engine,
        time_to_first_token_s=completion.time_to_first_token_s,
        token_ids=completion.token_ids,
        kept_memory=kept_memory,
    )


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends generation for this model and tokenizer."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def until_eos(row: list[int], eos: set[int]) -> tuple[list[int], str]:
    """A row's new tokens up to its first end-of-sequence token (kept, as a single call keeps
    it), and why the row stopped; what follows is padding."""
    for i, token in enumerate(row):
        if token in eos:
            return row[: i + 1], "eos"
    return row, "length"


def release_after_generation(device: str, memory_at_end: int | None) -> int | None:
    """Free what generation left (young cycles, cached allocator blocks); return bytes freed.

    'Freed' compares what the process held when the last token was produced (KV cache and
    logits still alive) with what it holds after the release. `generate` leaves no cycle that
    holds a tensor (measured: live tensor bytes are the same before and after a full
    collection), so a young-generation pass suffices; a full one costs ~200 ms once
    transformers is imported, which would dominate short calls. `%qwen3_clean` does the full one.
    The C heap is not trimmed here (`malloc_trim` took 80 ms per call on a fragmented heap,
    holding the arena locks): `%qwen3_clean` and `--unload` trim it and report what it returned.
    """
    gc.collect(1)
    release_allocator_cache(device)
    if memory_at_end is None:
        return None
    return max(0, memory_at_end - current_memory(device)[0])
