"""Where two greedy decodes part, whether that is a near-tie in the logits, and how far two
ways of computing the same logits may differ.

In bfloat16 two correct implementations of the same model round differently (one attention
kernel keeps float32 partial sums, another rounds probabilities to bf16), so greedy tokens can
part where the two best candidates are within rounding of each other. A real bug often shows as
a divergence where one candidate was clearly ahead; with random weights' nearly flat logits it
may not (a rotary position off by one parted at a near-tie), so the tests also compare whole
logit vectors against the rounding transformers itself shows (`rounding_bound`). These helpers
run on plain lists so the judgement is tested on the CPU before a GPU ever needs it.
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


def near_tie(
    logits: Sequence[float], decoded: int, other: int, ulps: float = 8, unit: float | None = None
) -> tuple[bool, str]:
    """Whether `other` was within `ulps` bf16 steps of `decoded` in the reference's own logits
    (the scores greedy decoding chose `decoded` from, so it must be their best) — and the
    figures that say so. A bug (a wrong position, a stale cache slot) picks a token many steps
    down; rounding picks one a few steps from the top. A step is the bf16 spacing at the two
    logits, or `unit` (one unit for a whole answer's comparisons)."""
    ranked = sorted(range(len(logits)), key=lambda i: logits[i], reverse=True)
    gap = abs(logits[decoded] - logits[other])
    scale = unit or bf16_ulp(max(abs(logits[decoded]), abs(logits[other])))
    best = logits[ranked[0]]
    tie = logits[decoded] == best and gap <= ulps * scale
    message = (
        f"logit[{decoded}] = {logits[decoded]:.5f}, logit[{other}] = {logits[other]:.5f}, gap "
        f"{gap:.5f} = {gap / scale:.1f} bf16 steps (tolerance {ulps:g}); ranks "
        f"{ranked.index(decoded) + 1} and {ranked.index(other) + 1}"
    )
    return tie, message


def rounding_bound(forward: Sequence[float]) -> float:
    """The most a correct bf16 step may differ from generate's scores over the vocabulary, fed
    generate's own tokens (test_fast_engine's `teacher_forced`), given `forward`, what
    transformers' own second way of computing them differs by: 2.5 times its worst, and no
    less than 8 bf16 steps. Measured on the CPU (steps of the answer's best score): at full
    size the step's worst was 1.05-1.1 times one forward's (4.2 and 3.8 against 4.0 and 3.4),
    on `tiny` 1.8-2.6 times (under the floor); a rotary position off by one 21.8-40.5."""
    return max(8.0, 2.5 * max(forward))


def pick_tolerance(difference: float) -> float:
    """How far apart (bf16 steps) two candidates may be in generate's scores for a step whose
    logits differ from generate's by at most `difference` to pick the other: each moved by up
    to `difference`, plus a step each for rounding the head apart from those logits."""
    return 2 * difference + 2


def spread(values: Sequence[float]) -> str:
    """Median and worst of per-step differences, as the tests' messages print them."""
    ordered = sorted(values)
    return f"median {ordered[len(ordered) // 2]:.1f}, worst {ordered[-1]:.1f} bf16 steps"
