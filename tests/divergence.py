"""Where two greedy decodes part, and whether that is a near-tie in the logits.

In bfloat16 two correct implementations of the same model round differently (one attention
kernel keeps float32 partial sums, another rounds probabilities to bf16), so greedy tokens can
part where the two best candidates are within rounding of each other. A real bug shows as a
divergence where one candidate was clearly ahead. These helpers tell the two apart; they run on
plain lists so the judgement is tested on the CPU before a GPU ever needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BF16_MANTISSA_BITS = 7


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the two token lists differ (a length difference counts), or None."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def bf16_ulp(value: float) -> float:
    """The spacing of bfloat16 numbers at `value` (2^-126 spacing near zero)."""
    if value == 0 or not math.isfinite(value):
        return 2.0**-133
    return 2.0 ** (math.floor(math.log2(abs(value))) - BF16_MANTISSA_BITS)


def near_tie(logits: Sequence[float], first: int, second: int, ulps: int = 4) -> tuple[bool, str]:
    """Whether tokens `first` and `second` were within `ulps` bf16 steps of each other and
    were the two best candidates — and the figures that say so."""
    ranked = sorted(range(len(logits)), key=lambda i: logits[i], reverse=True)
    top_two = set(ranked[:2])
    gap = abs(logits[first] - logits[second])
    scale = bf16_ulp(max(abs(logits[first]), abs(logits[second])))
    tie = gap <= ulps * scale and {first, second} == top_two
    message = (
        f"logit[{first}] = {logits[first]:.5f}, logit[{second}] = {logits[second]:.5f}, gap "
        f"{gap:.5f} = {gap / scale:.1f} bf16 steps (tolerance {ulps}); ranks "
        f"{ranked.index(first) + 1} and {ranked.index(second) + 1}"
    )
    return tie, message
