"""Whether a model's chat template lets a call choose to think, or decides it itself.

Why: Qwen3's hybrid models honour `enable_thinking`, but Qwen3-*-Instruct-2507 never think
(their template has no switch) and Qwen3-*-Thinking-2507 always do (their template opens
`<think>` in the prompt). With thinking on by default, an Instruct-2507 answer streamed under
"Thinking…", and one that reached --max-new-tokens was filed whole as "thinking not finished"
with no answer; with --no-think, a Thinking-2507 thought was shown as the answer, `</think>`
and all. The template tells which, once per tokenizer."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import replace
from typing import Any

from .generation import THINK_START, GenerationOptions

_PROBE = [{"role": "user", "content": "?"}]
_MODES: weakref.WeakKeyDictionary[Any, tuple[object, bool | None]] = weakref.WeakKeyDictionary()
"""Per tokenizer: the template it was read from, and its mode."""


def template_thinks(tokenizer: Any) -> bool | None:
    """None when the template honours `enable_thinking` (or cannot tell); True when it always
    opens a think block; False when it never thinks."""
    template = getattr(tokenizer, "chat_template", None)
    with contextlib.suppress(KeyError, TypeError):
        read_from, mode = _MODES[tokenizer]
        if read_from == template:
            return mode
    mode = _read_mode(tokenizer)
    with contextlib.suppress(TypeError):  # not weak-referenceable: read again next time
        _MODES[tokenizer] = (template, mode)
    return mode


def _read_mode(tokenizer: Any) -> bool | None:
    try:
        on, off = (
            str(
                tokenizer.apply_chat_template(
                    _PROBE, tokenize=False, add_generation_prompt=True, enable_thinking=think
                )
            )
            for think in (True, False)
        )
    except Exception:  # no chat template, or one that fails on a bare question: as asked
        return None
    if on != off:
        return None
    return on.rstrip().endswith(THINK_START)


def for_model(options: GenerationOptions, tokenizer: Any) -> GenerationOptions:
    """`options` with `think` as the model will do it (unchanged for a hybrid template)."""
    fixed = template_thinks(tokenizer)
    if fixed is None or fixed == options.think:
        return options
    return replace(options, think=fixed)
