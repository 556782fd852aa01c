"""How long a request a server takes, and its refusal of a longer one in this magic's words.

vLLM and SGLang list each model's context length (`max_model_len`) in GET /v1/models. SGLang
refuses a request whose prompt plus `max_tokens` exceeds it with a 400 whose text names the
numbers; vLLM 0.32 and later shorten `max_tokens` to the room left instead, and refuse only a
prompt longer than the context (in tokens, or in characters before tokenizing) or one that fills
it ("max_tokens must be at least 1, got 0"). The client has no tokenizer to count a prompt
with, so the check before sending covers what no prompt can fit (--max-new-tokens alone at or
past the limit, which also spares a batch one refusal per prompt) on a server that would refuse
it; a server's refusal is re-worded from its own numbers, so the user reads which option to
change instead of the server's phrasing of `max_tokens`. `transformers serve` lists no limit
and refuses nothing: there a long answer runs until it ends or is interrupted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_LIMIT = re.compile(
    r"maximum context length (?:is|of) (\d+)"  # vLLM, SGLang (prompt + answer)
    r"|context length \((\d+)(?: tokens)?\)"  # SGLang (the prompt alone); vLLM's get_max_tokens
    r"|maximum allowed length \((\d+) tokens\)"  # SGLang's KV-pool check (in the stream)
)
_PROMPT = re.compile(
    r"(?:contains|has) (?:at least )?(\d+) input tokens"  # vLLM
    r"|\((\d+) in the messages"  # older vLLM
    r"|(\d+) tokens from the input messages"  # SGLang
    r"|input \((\d+) tokens\)"  # SGLang (the prompt alone)
    r"|Input length \((\d+)(?: tokens)?\)"  # vLLM's get_max_tokens, SGLang's KV-pool check
)
_CHARS = re.compile(r"contains (\d+) characters \(more than")  # vLLM 0.33, before tokenizing
_NO_ROOM = "max_tokens must be at least 1, got 0"
"""vLLM 0.33 when the prompt fills the context exactly: the room left for the answer is 0."""
CHAT_HINT = " (--reset clears a --chat conversation)"


@dataclass(frozen=True)
class ContextRefusal:
    """What a server's refusal said: its context length, and the prompt's size if named (in
    tokens, or in characters when the server refused it before tokenizing)."""

    limit: int
    prompt_tokens: int | None
    prompt_chars: int | None = None


def declared_context(entry: Any) -> int | None:
    """A model's context length from its GET /v1/models entry (None: the server does not say)."""
    value: Any = getattr(entry, "max_model_len", None)
    if value is None:
        extra = getattr(entry, "model_extra", None)
        value = extra.get("max_model_len") if isinstance(extra, dict) else None
    try:
        limit = int(value)
    except (TypeError, ValueError):
        return None
    return limit if limit > 0 else None


def context_refusal(server_says: str) -> ContextRefusal | None:
    """The numbers in a 400 that refused a request for its length (None: another refusal)."""
    limit = _first_number(_LIMIT, server_says)
    if limit is None:
        return None
    chars = _first_number(_CHARS, server_says)
    return ContextRefusal(limit, _first_number(_PROMPT, server_says), chars)


def fills_context(server_says: str) -> bool:
    """Whether a 400 says the prompt left no room for any answer (vLLM 0.33's "max_tokens must
    be at least 1, got 0": it shortens max_tokens to the room left, and none was)."""
    return _NO_ROOM in server_says


def context_full(limit: int | None, model: str, where: str, chat: bool = False) -> str:
    """The one line for a prompt that fills the whole context, leaving no room for an answer."""
    size = f"{limit:,}-token " if limit is not None else ""
    return (
        f"the prompt fills the whole {size}context {model} is served with at {where}, leaving no "
        "room for an answer: shorten it" + (CHAT_HINT if chat else "")
    )


def answer_cannot_fit(max_new_tokens: int, limit: int, model: str, where: str) -> str | None:
    """The one-line error for an answer budget that leaves no room for any prompt, else None."""
    if max_new_tokens < limit:
        return None
    return (
        f"--max-new-tokens {max_new_tokens:,} leaves no room for the prompt in the {limit:,}-token "
        f"context {model} is served with at {where}: lower --max-new-tokens"
    )


def too_long(
    refusal: ContextRefusal, max_new_tokens: int, model: str, where: str, chat: bool = False
) -> str:
    """A server's length refusal as one line naming the option to change."""
    context = f"the {refusal.limit:,}-token context {model} is served with at {where}"
    shorten = "shorten it" + (CHAT_HINT if chat else "")
    tokens, chars = refusal.prompt_tokens, refusal.prompt_chars
    prompt = "prompt" if tokens is None else f"prompt ({tokens:,} tokens)"
    if chars is not None:  # refused for its characters: the prompt alone is too long
        return f"prompt ({chars:,} characters) exceeds {context}: {shorten}"
    if tokens is not None and tokens >= refusal.limit:
        return f"{prompt} exceeds {context}: {shorten}"
    return (
        f"{prompt} + --max-new-tokens {max_new_tokens:,} exceeds {context}: {shorten} or lower "
        "--max-new-tokens"
    )


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    if match is None:
        return None
    return int(next(group for group in match.groups() if group is not None))
