"""The shapes the fast path builds its decode step for, bucketed so that a new prompt length
never compiles again: batch sizes round up to a power of two, the cache length to a power of two
of at least $QWEN3_JUPYTER_CACHE_TOKENS (4,096) tokens for a single call and that divided by the
batch for a batch (not below 512), and the sampler's top-k to a static width.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .base import EngineError

if TYPE_CHECKING:
    from ..generation import GenerationOptions

CACHE_TOKENS_ENV = "QWEN3_JUPYTER_CACHE_TOKENS"
MIN_CACHE_TOKENS = 4096
MIN_BATCH_CACHE_TOKENS = 512
SAMPLE_WIDTH = 64
"""Top-k candidates the sampler keeps (a static width); a larger --top-k widens it."""


def next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def batch_bucket(rows: int) -> int:
    """The batch size a decode graph is built for: the next power of two."""
    return next_power_of_two(max(1, rows))


def cache_bucket(tokens: int, minimum: int | None = None, batch: int = 1) -> int:
    """The cache length for `tokens` (prompt + new): the next power of two, at least a floor.

    A single call's floor is `minimum` ($QWEN3_JUPYTER_CACHE_TOKENS, default 4,096), so that a
    conversation's growing prompts share one compiled shape. A batch's floor is that divided by
    its rows, not below 512: every step reads the whole cache, so 16 rows × 4,096 slots would
    read twice the weights' bytes per token and hold 7 GiB for answers of a few hundred tokens;
    this way the smallest cache of any batch holds no more tokens than a single call's."""
    if minimum is None:
        text = os.environ.get(CACHE_TOKENS_ENV) or str(MIN_CACHE_TOKENS)
        try:
            minimum = int(text)
        except ValueError:
            raise EngineError(
                f"${CACHE_TOKENS_ENV}={text!r} is not a number of tokens (default 4096)"
            ) from None
    floor = next_power_of_two(max(1, minimum))
    rows = batch_bucket(batch)
    if rows > 1:
        floor = max(min(floor, MIN_BATCH_CACHE_TOKENS), floor // rows)
    return max(floor, next_power_of_two(tokens))


def sample_width(options: GenerationOptions, vocab: int) -> int:
    """0 for greedy; else the static top-k width the sampler needs."""
    if options.greedy:
        return 0
    wanted = options.sampling()["top_k"] or vocab
    return min(vocab, max(SAMPLE_WIDTH, next_power_of_two(int(wanted))))
