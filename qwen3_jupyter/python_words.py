"""A magic's advice as a Python caller follows it: `%qwen3 --unload` is
`qwen3_jupyter.unload()` to a script, which has no magics to type.

Why one table: an API call's notices and errors (api_call) and a cleanup report read from Python
(cleanup_report) give the same advice, and two tables had already drifted apart.
"""

from __future__ import annotations

MAGIC_TO_PYTHON = (
    (
        "--reset clears a --chat conversation",
        "qwen3_jupyter.reset_chat() clears a chat=True conversation",
    ),
    (
        "%qwen3 --eager or --unload gives it back",
        "decode='eager' or qwen3_jupyter.unload() gives it back",
    ),
    ("run %qwen3 --eager once to reset", "make one call with decode='eager' to reset"),
    ("%qwen3 --eager resets the choice", "a call with decode='eager' resets the choice"),
    ("%qwen3 --unload", "qwen3_jupyter.unload()"),
    ("%qwen3 --stop", "qwen3_jupyter.stop()"),
    ("%qwen3_clean --verbose", "qwen3_jupyter.cleanup(verbose=True)"),
    ("%qwen3_clean", "qwen3_jupyter.cleanup()"),
)
"""Whole phrases first: a longer one holds a shorter one (`%qwen3_clean --verbose`)."""


def magic_advice_in_python(text: str) -> str:
    """`text` with each magic phrase of `MAGIC_TO_PYTHON` replaced by what Python calls."""
    for magic, python in MAGIC_TO_PYTHON:
        text = text.replace(magic, python)
    return text
