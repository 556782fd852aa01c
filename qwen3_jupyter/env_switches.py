"""Yes/no environment variables ($QWEN3_JUPYTER_ALLOW_DOWNLOAD, _COMPILE, _TUNE, …), read one way.

Why: each was read its own way. `QWEN3_JUPYTER_ALLOW_DOWNLOAD=true` counted as no (only "1"
was yes), and the error then said to set the variable the user had set; `QWEN3_JUPYTER_TUNE=no`
was read as "no" but `TUNE=maybe` as yes. Now every one takes 1/true/yes/on and 0/false/no/off
(any case); unset, empty or anything else is its default.
"""

from __future__ import annotations

import os

YES = ("1", "true", "yes", "on")
NO = ("0", "false", "no", "off")


def switch(name: str, default: bool) -> bool:
    """Whether the switch `name` is on."""
    value = os.environ.get(name, "").strip().lower()
    return True if value in YES else False if value in NO else default


def unreadable(name: str) -> str | None:
    """The value of `name` when it is set to neither a yes nor a no, for an error to quote."""
    value = os.environ.get(name, "").strip()
    return value if value and value.lower() not in (*YES, *NO) else None
