"""How often streamed text goes to the caller, and which of it: shared by every engine.

Why: each update sends the whole text so far (the display re-renders all of it), so at a fixed
0.1 s a 32k-token thought cost ~22 ms of decoding and rendering per update on the decode thread
and ~150 KB of Markdown to the browser ten times a second. The wait grows with the text instead.
And a character split across tokens (CJK, emoji) decodes to U+FFFD until its last byte comes:
shown as it is, `�` flickered through the answer."""

from __future__ import annotations

SHOWN_CHARACTERS_PER_SECOND = 200_000
"""Text per second of waiting between updates once the text is long: 0.1 s stays the wait up
to 20,000 characters; at 130,000 (32k tokens) an update comes every 0.65 s."""


def next_wait(interval: float, text: str) -> float:
    """Seconds until the update after one that sent `text`: `interval`, or more for long text."""
    return max(interval, len(text) / SHOWN_CHARACTERS_PER_SECOND)


def settled(text: str) -> str:
    """`text` without a trailing run of U+FFFD, which is a character still arriving."""
    return text.rstrip("\ufffd")
