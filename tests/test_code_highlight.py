"""code_highlight.py: a code block shown as HTML keeps JupyterLab's colours and its text."""

from __future__ import annotations

import html
import re

from qwen3_jupyter.code_highlight import highlighted

SPAN = re.compile(
    r'<span style="color: var\(--jp-mirror-editor-([\w-]+)-color\)">(.*?)</span>', re.S
)

CODE = 'def f(a, b):\n    """Doc <x>."""\n    return a < b and True  # cmp\n\n\n'


def test_tokens_get_jupyterlabs_colours_and_the_text_is_the_code() -> None:
    shown = highlighted(CODE, "python")
    colours = {html.unescape(text): colour for colour, text in SPAN.findall(shown)}
    assert colours["def"] == "keyword" and colours["return"] == "keyword"
    assert colours["f"] == "def" and colours["True"] == "atom"
    assert colours["# cmp"] == "comment" and colours['"""Doc <x>."""'] == "string"
    assert html.unescape(SPAN.sub(r"\2", shown)) == CODE, "every character, blank lines too"


def test_an_unknown_or_missing_language_is_plain_escaped_text() -> None:
    for language in ("", "no-such-language"):
        assert highlighted("a < b", language) == "a &lt; b"


def test_the_callers_escaping_is_applied_to_every_token() -> None:
    shown = highlighted("x = '$y'", "python", lambda text: html.escape(text).replace("$", "&#36;"))
    assert "$" not in shown and "&#36;y" in shown
