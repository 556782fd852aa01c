"""A magic's words as a Python caller reads them: `%qwen3 --unload` is
`qwen3_jupyter.unload()` to a script, which has no magics to type, and `--max-new-tokens 12` is
`max_new_tokens=12`.

Why one place: an API call's notices and errors (api_call), a cleanup report read from Python
(cleanup_report) and a `Result`'s repr give the same advice, and two tables had already drifted
apart.
"""

from __future__ import annotations

import re

MAGIC_TO_PYTHON = (
    (
        "--reset clears a --chat conversation",
        "qwen3_jupyter.reset_chat() clears a chat=True conversation",
    ),
    (
        "%qwen3 --eager or --unload gives it back",
        "decode='eager' or qwen3_jupyter.unload() gives it back",
    ),
    ("continued the --chat conversation", "continued the chat=True conversation"),
    ("--reset starts a new one", "qwen3_jupyter.reset_chat() starts a new one"),
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


_FLAG = re.compile(
    r"(?<![\w/~.-])--(max-new-tokens|device|dtype|model|server|temperature|top-p|top-k|seed|system|"
    r"batch-size|concurrency|memory-budget|out|eager|fast)(?![\w-])"
    r"(?: ('[^']*'|\"[^\"]*\"|\d[\d,._]*\d|\d|[/~][\w./~-]*\w|\w[\w:./-]*\w|\w))?"
)
"""A flag the API has an argument for, and the word after it. That word is the flag's value
where it unmistakably is one (quoted, a number, a path, or a word only a value can be: see
`_WORD_VALUES`); any other word after it is the sentence's."""

_WORD_VALUES = {
    "device": re.compile(r"cpu|mps|xpu|cuda(?::\d+)?"),
    "dtype": re.compile(r"bfloat16|float16|float32"),
    "model": re.compile(r"tiny|random:[\w.-]+|[\w.-]+/[\w.-]+"),  # embedded, or a Hub id
}
"""Bare words that are the flag's value (`use --device cpu`, `with --model tiny`), never the
sentence's (`--model then names the served model`, `--dtype or --device cpu`)."""


def _argument(match: re.Match[str]) -> str:
    """`--device 'gpu'` -> `device='gpu'`, `--max-new-tokens 12` -> `max_new_tokens=12`,
    `--model /path` -> `model='/path'`, `use --device cpu` -> `use device='cpu'`,
    `lower --max-new-tokens` -> `lower max_new_tokens`, `--eager` -> `decode='eager'`."""
    flag, value = match.group(1), match.group(2)
    if flag in ("eager", "fast"):
        return f"decode={flag!r}" + (f" {value}" if value else "")
    name = flag.replace("-", "_")
    if value is None:
        return name
    if value[0] in "/~":
        return f"{name}={value!r}"
    if value[0] in "'\"" or value[0].isdigit():
        return f"{name}={value}"
    word = _WORD_VALUES.get(flag)
    if word is not None and word.fullmatch(value):
        return f"{name}={value!r}"
    return f"{name} {value}"  # the sentence's word


def in_python_words(text: str) -> str:
    """`text`, a message worded for the magic (its flags, its advice), as a Python caller reads
    it: `--max-new-tokens 12` is `max_new_tokens=12`, `%qwen3 --unload` is
    `qwen3_jupyter.unload()`."""
    text = magic_advice_in_python(text)
    text = re.sub(r"decode with --(eager|fast)\b", r"use decode='\1'", text)
    text = re.sub(r"--(eager|fast)'s", r"\1 decoding's", text)
    text = re.sub(r"(?<![\w-])--no-think\b", "think=False", text)
    text = re.sub(r"(?<![\w-])--chat turn\b", "chat turn", text)
    return _FLAG.sub(_argument, text)
