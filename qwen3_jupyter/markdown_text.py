"""Model text made safe to show as Markdown: raw HTML outside code and math is shown as typed.

Why: an answer is rendered as Markdown, and JupyterLab renders the raw HTML in Markdown that a
live session produced. An answer that says "wrap it in a <div>" lost its tag (and could hide the
text after it), and text the model was steered into writing (a prompt from `--file` data) could
put live HTML in the notebook. Code (spans, fenced and indented blocks), math (`$…$`, `$$…$$`,
`\\(…\\)`, `\\[…\\]`, which JupyterLab hands to MathJax as written: `&lt;` there is a TeX error)
and autolinks (`<https://…>`) already show their text as typed, so only the text around them is
escaped, and only `<`: that is what opens a tag, while `>` also starts a Markdown quote and `&`
an entity the model may have meant.

A `$` outside math is escaped too (`DOLLAR_OUTSIDE_MATH`): JupyterLab hands
anything between two dollar signs to MathJax, so "$120 a night and the taxi $35" was typeset as
italic maths with its spaces gone. Math is told from money as pandoc tells it: an opening `$`
followed by a non-space, a closing one after a non-space and not before a digit."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INDENTED = re.compile(r"^(?: {4}|\t)")
_NO_BLANK_LINE = r"(?:(?!\n[ \t]*\n).)"
_MATH = rf"""
    \$\${_NO_BLANK_LINE}+?\$\$                    # display math
    | (?<!\\)\$(?!\s)[^$\n`]*?(?<![\s\\])\$(?!\d)   # inline math, on one line, no code in it
    | \\\({_NO_BLANK_LINE}+?\\\)                  # \( … \)
    | \\\[{_NO_BLANK_LINE}+?\\\]                  # \[ … \]
"""
_KEPT = re.compile(
    rf"""
    (`+)(?!`){_NO_BLANK_LINE}*?(?<!`)\1(?!`)    # a code span (never across a paragraph)
    | {_MATH}
    | <(?:https?|ftp|mailto):[^\s<>]*>            # an autolink
    | (?<=\])\([^()\s]*\)                          # a link's address: [docs](…?k=$KEY)
    """,
    re.DOTALL | re.VERBOSE,
)
_MATH_ONLY = re.compile(_MATH, re.DOTALL | re.VERBOSE)


def escape_html(markdown: str) -> str:
    """`markdown` with every `<` outside code, math and autolinks written `&lt;`.

    A fence left open (an answer still streaming, or cut off) runs to the end, as Markdown
    renders it; an indented line after a blank line (or after another such line) is code."""
    out: list[str] = []
    prose: list[str] = []
    fence = ""
    previous_blank, in_indented = True, False
    for line in markdown.splitlines(keepends=True):
        blank = not line.strip()
        if fence:
            out.append(line)
            closing = line.strip()
            if closing.startswith(fence) and set(closing) == {fence[0]}:
                fence = ""
        elif opening := _FENCE.match(line):
            out.append(_escape_prose("".join(prose)))
            prose = []
            out.append(line)
            fence = opening.group(1)
        elif not blank and _INDENTED.match(line) and (previous_blank or in_indented):
            out.append(_escape_prose("".join(prose)))
            prose = []
            out.append(line)
            in_indented = True
        else:
            prose.append(line)
            in_indented = in_indented and blank
        previous_blank = blank
    out.append(_escape_prose("".join(prose)))
    return "".join(out)


def _escape_prose(text: str) -> str:
    """`<` and `$` escaped outside the spans Markdown or MathJax show as written (`_KEPT`)."""
    return _outside(_KEPT, text, _escaped)


def _outside(kept: re.Pattern[str], text: str, escape: Callable[[str], str]) -> str:
    """`text` with `escape` applied to what lies between the matches of `kept`."""
    pieces: list[str] = []
    start = 0
    for match in kept.finditer(text):
        pieces += [escape(text[start : match.start()]), match.group(0)]
        start = match.end()
    pieces.append(escape(text[start:]))
    return "".join(pieces)


def _escaped(prose: str) -> str:
    return prose.replace("<", "&lt;").replace("$", DOLLAR_OUTSIDE_MATH)


DOLLAR_OUTSIDE_MATH = "\\\\$"
"""`\\\\$`: Markdown makes it `\\$`, which JupyterLab's MathJax shows as a plain `$`. A single
backslash (`\\$`) was undone by Markdown first, and MathJax typeset the rest anyway (seen in
JupyterLab 4 through Chromium); `&#36;` too, as it reaches MathJax as `$`."""


def dollars_escaped_in_html(text: str) -> str:
    """`text`, going into raw HTML (the thinking's blockquote), with every `$` outside math
    written `\\$`: Markdown leaves raw HTML as it is, and MathJax shows `\\$` as a plain `$`
    (the answer's Markdown needs two backslashes, `DOLLAR_OUTSIDE_MATH`). Backticks make no
    code in raw HTML, so only math is kept as written. Checked in JupyterLab 4 (Chromium)."""
    return _outside(_MATH_ONLY, text, lambda prose: prose.replace("$", "\\$"))


_MARKDOWN_MARKS = re.compile(r"([\\`*_\[\]~])")


def as_typed(text: str) -> str:
    """`text` (a prompt, which is not Markdown) as Markdown that shows it as typed: `&`, `<`
    and `>` as entities, the marks of emphasis, code and links escaped, and every `$` too. A
    batch table drew "Is $40 fair? … pay $55" as maths and lost the rows between, and
    `__init__` in bold. Each backslash is written `\\\\` then an empty element: without the
    element JupyterLab read `\\\\(`, `\\\\[` and `\\\\begin` as maths openers (swallowing every
    row to the closer) and MathJax showed `\\\\` as one backslash; `&#92;` still reached
    MathJax as `\\` (each seen in JupyterLab 4 through Chromium)."""
    marked = _MARKDOWN_MARKS.sub(r"\\\1", html.escape(text, quote=False))
    marked = marked.replace("\\\\", "\\\\<span></span>")
    return marked.replace("$", DOLLAR_OUTSIDE_MATH)
