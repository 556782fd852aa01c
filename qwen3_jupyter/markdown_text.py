"""Model text made safe to show as Markdown: raw HTML outside code is shown as typed.

Why: an answer is rendered as Markdown, and JupyterLab renders the raw HTML in Markdown that a
live session produced. An answer that says "wrap it in a <div>" lost its tag (and could hide the
text after it), and text the model was steered into writing (a prompt from `--file` data) could
put live HTML in the notebook. Code spans and fenced blocks already show their text as typed, so
only the text outside them is escaped, and only `<`: that is what opens a tag, while `>` also
starts a Markdown quote and `&` an entity the model may have meant."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)


def escape_html(markdown: str) -> str:
    """`markdown` with every `<` outside code spans and fenced code blocks written `&lt;`.

    A fence left open (an answer still streaming, or cut off) runs to the end, as Markdown
    renders it."""
    out: list[str] = []
    prose: list[str] = []
    fence = ""
    for line in markdown.splitlines(keepends=True):
        opening = _FENCE.match(line)
        if fence:
            out.append(line)
            closing = line.strip()
            if closing.startswith(fence) and set(closing) == {fence[0]}:
                fence = ""
        elif opening:
            out.append(_escape_prose("".join(prose)))
            prose = []
            out.append(line)
            fence = opening.group(1)
        else:
            prose.append(line)
    out.append(_escape_prose("".join(prose)))
    return "".join(out)


def _escape_prose(text: str) -> str:
    """`<` escaped outside inline code spans (a backtick run closed by a run of equal length)."""
    pieces: list[str] = []
    start = 0
    for span in _CODE_SPAN.finditer(text):
        pieces.append(text[start : span.start()].replace("<", "&lt;"))
        pieces.append(span.group(0))
        start = span.end()
    pieces.append(text[start:].replace("<", "&lt;"))
    return "".join(pieces)
