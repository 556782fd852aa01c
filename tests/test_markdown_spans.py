"""markdown_spans.py: the spans of a paragraph Markdown or MathJax show as written."""

from __future__ import annotations

import pytest

from qwen3_jupyter.markdown_spans import ALL_KINDS, MATH, spans


def found(text: str, kinds: frozenset[str] = ALL_KINDS) -> list[tuple[str, str]]:
    return [(span.kind, text[span.start : span.end]) for span in spans(text, kinds)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a `b` c ``d ` e`` f", [("code", "`b`"), ("code", "``d ` e``")]),
        ("an escaped \\`x` and ```y``` ", [("code", "```y```")]),
        ("`never closed, then $x$", [("math", "$x$")]),
        ("$$a<b$$ and $c$ and $5 or $6", [("math", "$$a<b$$"), ("math", "$c$")]),
        ("\\\\(p<q\\\\) but \\(r<s\\)", [("math", "\\\\(p<q\\\\)")]),
        (
            "\\begin{align} a &< b \\end{align} \\begin{x}",
            [("math", "\\begin{align} a &< b \\end{align}")],
        ),
        (
            "<https://x.org/a> and [d](https://x.org/?k=$K)",
            [("autolink", "<https://x.org/a>"), ("address", "(https://x.org/?k=$K)")],
        ),
        ("`a\n\nb` $c\n\nd$", []),  # none across a blank line
        ("one\n\n`two` \\\\( \\\\( `three`", [("code", "`two`"), ("code", "`three`")]),
    ],
)
def test_spans_are_found_as_markdown_reads_them(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


def test_only_the_kinds_asked_for_are_found() -> None:
    """The thinking goes into raw HTML, where backticks make no code: only its math counts."""
    assert found("`$x$` and $y$", frozenset({MATH})) == [("math", "$x$"), ("math", "$y$")]


def test_openers_without_closers_are_text_and_later_spans_still_count() -> None:
    """Unclosed openers were scanned to the paragraph's end from each one (47 s for 180 KB);
    each closer is now looked for once past where it was missing."""
    text = "\\\\( a " * 2000 + "`" * 7 + " x " + "`ok` $m$"
    assert found(text) == [("code", "`ok`"), ("math", "$m$")]
