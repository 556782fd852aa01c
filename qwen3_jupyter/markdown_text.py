"""Model text made safe to show as Markdown: no `<` the model wrote reaches the renderer as a
`<`, and no image it names is fetched.

Why: an answer is rendered as Markdown, and JupyterLab renders the raw HTML in Markdown that a
live session produced, scripts and event handlers included (a saved notebook is signed, so
they ran again when it was reopened). An answer that says "wrap it in a <div>" lost its tag,
and an answer steered by a document (a prompt from `--file` data, a served model) ran script
with the notebook server's rights. Escaping only outside what this module took for code was
not enough: where its reading of the Markdown differed from JupyterLab's (a backslash before a
backtick, a fence whose info string has a backtick, an indented line inside a list, `\\(`),
the `<` it left went to the renderer as HTML. So every `<` is neutralised wherever it is:
`&lt;` in prose and link addresses; `\\lt ` in math (`&lt;` there is a TeX error); code that
holds a `<` is written as HTML (`<pre><code>`, `<code>`) with its text escaped, which shows the
same and is inert however the renderer reads the lines around it. Code without one stays
Markdown (JupyterLab highlights it). An image (`![…](…)`) is shown as its link: the browser
fetched it as the answer was drawn, so a steered answer could send the prompt's data to any
address (`![](https://…/?q=…)`), even from a notebook that was only opened.

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
    (?P<code>(?<!\\)(`+)(?!`){_NO_BLANK_LINE}*?(?<!`)\2(?!`))  # a code span, in a paragraph
    | (?P<math>{_MATH})
    | (?P<autolink><(?:https?|ftp|mailto):[^\s<>]*>)     # an autolink
    | (?P<address>(?<=\])\([^()\s]*\))                   # a link's address: [docs](…?k=$KEY)
    """,
    re.DOTALL | re.VERBOSE,
)
_MATH_ONLY = re.compile(_MATH, re.DOTALL | re.VERBOSE)


def escape_html(markdown: str) -> str:
    """`markdown` with every `<` neutralised (see the module's doc) and its images as links.

    A fence left open (an answer still streaming, or cut off) runs to the end, as Markdown
    renders it; an indented line after a blank line (or after another such line) is code."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []  # an open fenced block's lines, its opening fence first
    fence = ""
    previous_blank, in_indented = True, False
    for line in markdown.splitlines(keepends=True):
        blank = not line.strip()
        indented_code = not blank and _INDENTED.match(line) and (previous_blank or in_indented)
        if in_indented and not indented_code and not blank:
            out.append(_indented_block(code))
            code, in_indented = [], False
        if fence:
            code.append(line)
            closing = line.strip()
            if closing.startswith(fence) and set(closing) == {fence[0]}:
                out.append(_fenced_block(code, closed=True))
                code, fence = [], ""
        elif opening := _FENCE.match(line):
            out.append(_escape_prose("".join(prose)))
            prose, code = [], [line]
            fence = opening.group(1)
        elif indented_code or (in_indented and blank):
            if not in_indented:
                out.append(_escape_prose("".join(prose)))
                prose = []
            code.append(line)
            in_indented = True
        else:
            prose.append(line)
        previous_blank = blank
    if fence:
        out.append(_fenced_block(code, closed=False))
    elif in_indented:
        out.append(_indented_block(code))
    out.append(_escape_prose("".join(prose)))
    return "".join(out)


def escape_inline(text: str) -> str:
    """`text` (one line, a table cell's) as `escape_html` makes prose: a cell holds no block,
    so a line that starts with a fence is no code there."""
    return _escape_prose(text)


def _fenced_block(lines: list[str], closed: bool) -> str:
    """A fenced code block (opening fence, its lines, the closing fence if it came) as written,
    or as HTML when it holds a `<` anywhere (its info string too)."""
    if not any("<" in line for line in lines):
        return "".join(lines)
    opening = _FENCE.match(lines[0])
    info = lines[0][opening.end() if opening else 0 :].strip().split(" ")[0]
    body = lines[1:-1] if closed else lines[1:]
    return _html_block("".join(body), _LANGUAGE.sub("", info))


def _indented_block(lines: list[str]) -> str:
    """An indented code block as written, or as HTML when it holds a `<`; its blank lines after
    the code are kept outside it."""
    trailing = len(lines) - len("".join(lines).rstrip().splitlines(keepends=True))
    code, blanks = lines[: len(lines) - trailing], lines[len(lines) - trailing :]
    if not any("<" in line for line in code):
        return "".join(lines)
    body = "".join(_INDENTED.sub("", line, count=1) for line in code)
    return _html_block(body, "") + "".join(blanks)


_LANGUAGE = re.compile(r"[^\w+#.-]")


def _html_block(code: str, language: str) -> str:
    """`code` as an HTML code block that shows it as written, on lines of its own."""
    attribute = f' class="language-{language}"' if language else ""
    return f"\n<pre><code{attribute}>{_as_html_text(code)}</code></pre>\n\n"


def _as_html_text(code: str) -> str:
    """`code` as HTML text that JupyterLab shows as written: escaped, and its `$`, `\\` and
    backticks as character references, which neither its math finder (it reads the Markdown
    before rendering: `$…$` in code was taken out and escaped twice) nor Markdown read; MathJax
    leaves `<code>` alone."""
    escaped = html.escape(code, quote=False)
    return escaped.replace("$", "&#36;").replace("\\", "&#92;").replace("`", "&#96;")


def _escape_prose(text: str) -> str:
    """`<` and `$` escaped outside the spans Markdown or MathJax show as written (`_KEPT`),
    and `<` neutralised inside them too."""
    pieces: list[str] = []
    start = 0
    for match in _KEPT.finditer(text):
        pieces += [_escaped(text[start : match.start()]), _kept(match)]
        start = match.end()
    pieces.append(_escaped(text[start:]))
    return "".join(pieces)


def _kept(match: re.Match[str]) -> str:
    """A span shown as written, its `<` neutralised: a code span holding one as HTML, math's
    as TeX's `\\lt`, a link address's as `&lt;` (Markdown reads it back as `<`)."""
    span = match.group(0)
    if "<" not in span or match.group("autolink"):
        return span
    if match.group("code"):
        ticks = len(match.group(2))
        inner = span[ticks:-ticks]
        if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
            inner = inner[1:-1]
        return f"<code>{_as_html_text(inner.replace(chr(10), ' '))}</code>"
    if match.group("math"):
        return span.replace("<", "\\lt ")
    return span.replace("<", "&lt;")


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
    prose = prose.replace("<", "&lt;").replace("$", DOLLAR_OUTSIDE_MATH)
    return prose.replace("![", "\\![")  # an image shown as its link, not fetched


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
