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

from .code_highlight import highlighted
from .markdown_spans import ADDRESS, AUTOLINK, CODE, MATH, spans

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INDENTED = re.compile(r"^(?: {4}|\t)")


def escape_html(markdown: str) -> str:
    """`markdown` with every `<` neutralised (see the module's doc) and its images as links.

    Its blocks are read as Markdown reads them, closely enough to keep their look: quotes and
    list items (their lines taken out, escaped as a text of their own, put back), fenced code
    (left open while an answer streams or when it was cut off, it runs to the end) and
    indented code. Where this reading differs from JupyterLab's, only the look can differ."""
    return _escape_blocks(_LINE_END.sub("\n", markdown), depth=0)


MAX_NESTING = 16
"""Quotes and list items deeper than this are read as plain text (escaped all the same): 600
nested `- ` on one line (a ruled line of `- - -` reads that way too) exceeded Python's recursion
limit and the answer was lost."""

_LINE_END = re.compile(r"\r\n?")
_LINE = re.compile(r"[^\n]*\n|[^\n]+$")
_QUOTE = re.compile(r"^ {0,3}> ?")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?= |\n|$)")
_BREAK = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
"""A thematic break (`- - -`, `***`): never a list item."""
_HEADING_OR_BREAK = re.compile(r"^ {0,3}(?:#{1,6}(?: |$)|(?:[-*_] *){3,}$)")
_NEEDS_HTML = ("<", "![")
"""What code is written as HTML for: a tag, or an image Markdown would fetch were the code
not code to JupyterLab."""


def _escape_blocks(text: str, depth: int) -> str:
    if depth > MAX_NESTING:
        return _escape_prose(text)
    lines = _LINE.findall(text)
    out: list[str] = []
    prose: list[str] = []

    def flush_prose() -> None:
        out.append(_escape_prose("".join(prose)))
        prose.clear()

    index, previous_blank = 0, True
    while index < len(lines):
        line = lines[index]
        if _QUOTE.match(line):
            end = index
            while end < len(lines) and _QUOTE.match(lines[end]):
                end += 1
            flush_prose()
            out.append(_quoted_block(lines[index:end], depth))
        elif (item := _LIST_ITEM.match(line)) and not _BREAK.match(line):
            column = _content_column(line, item.end())
            end = _item_end(lines, index, column)
            flush_prose()
            out.append(_list_item(lines[index:end], column, depth))
        elif opening := _fence_opening(line):
            end = _fence_end(lines, index, opening.group(1))
            flush_prose()
            out.append(
                _fenced_block(
                    lines[index:end],
                    opening,
                    closed=end - index > 1 and _closes(lines[end - 1], opening.group(1)),
                )
            )
        elif not _blank(line) and _INDENTED.match(line) and previous_blank:
            end = index
            while end < len(lines) and (_blank(lines[end]) or _INDENTED.match(lines[end])):
                end += 1
            flush_prose()
            out.append(_indented_block(lines[index:end]))
        else:
            prose.append(line)
            end = index + 1
        previous_blank = _blank(lines[end - 1])
        index = end
    flush_prose()
    return "".join(out)


def _blank(line: str) -> bool:
    """Blank as Markdown counts it: spaces and tabs only (a no-break space is text)."""
    return not line.strip(" \t\n")


def _content_column(line: str, marker_end: int) -> int:
    """Where a list item's text starts: after the marker and its 1-4 spaces (one, when it has
    no text or 5+ spaces, which make its text indented code)."""
    spaces = len(line[marker_end:]) - len(line[marker_end:].lstrip(" "))
    rest = line[marker_end:].strip(" \n")
    return marker_end + (spaces if rest and spaces <= 4 else 1)


def _starts_a_block(line: str) -> bool:
    return bool(
        _LIST_ITEM.match(line)
        or _fence_opening(line)
        or _QUOTE.match(line)
        or _HEADING_OR_BREAK.match(line)
    )


def _item_end(lines: list[str], start: int, column: int) -> int:
    """The line after a list item: its lines are indented to its text's column, blank, or
    carry a paragraph on (lazily, with less indent); blank lines after it are not its own."""
    last, index = start, start + 1
    while index < len(lines):
        line = lines[index]
        indent = len(line) - len(line.lstrip(" "))
        if _blank(line):
            index += 1
            continue
        lazy = index == last + 1 and not _starts_a_block(line)
        if indent < column and not lazy:
            break
        last = index
        index += 1
    return last + 1


def _list_item(lines: list[str], column: int, depth: int) -> str:
    """A list item escaped as a text of its own, its marker and indent put back."""
    inner = [lines[0][column:] if len(lines[0]) > column else "\n"]
    for line in lines[1:]:
        spaces = len(line) - len(line.lstrip(" "))
        inner.append(line[min(spaces, column) :])
    escaped = _escape_blocks("".join(inner), depth + 1).splitlines(keepends=True)
    marker = lines[0][:column]
    if not escaped:
        return lines[0]
    shown = [marker + escaped[0] if escaped[0].strip() else marker.rstrip() + "\n"]
    shown += [" " * column + line if line.strip() else line for line in escaped[1:]]
    return "".join(shown)


def _quoted_block(lines: list[str], depth: int) -> str:
    """A quote's lines escaped as a text of their own, each given its `> ` back."""
    inner = "".join(_QUOTE.sub("", line, count=1) for line in lines)
    if not inner.strip():  # an empty quote (`>` alone) stays: it holds nothing to escape
        return "".join(lines)
    return "".join(
        f"> {line}" for line in _escape_blocks(inner, depth + 1).splitlines(keepends=True)
    )


def _fence_end(lines: list[str], start: int, fence: str) -> int:
    """The line after a fenced block's closing fence (the end when it has none yet)."""
    for index in range(start + 1, len(lines)):
        if _closes(lines[index], fence):
            return index + 1
    return len(lines)


def _fence_opening(line: str) -> re.Match[str] | None:
    """A fence that opens a code block: a backtick fence whose info string has a backtick is
    text (```` ```py` ````), as Markdown reads it."""
    opening = _FENCE.match(line)
    if opening and opening.group(1)[0] == "`" and "`" in line[opening.end() :]:
        return None
    return opening


def _closes(line: str, fence: str) -> bool:
    """Whether `line` closes a block opened by `fence`: as JupyterLab's Markdown closes it,
    the fence followed by any backticks or tildes (```` ```~ ```` closed a block this module
    kept open, and what followed was read as code here and as text there)."""
    closing = line.rstrip("\n").strip(" ")  # a tab after it: no closing fence to Markdown
    indent = len(line) - len(line.lstrip(" "))
    return indent <= 3 and closing.startswith(fence) and set(closing) <= {"`", "~"}


def escape_inline(text: str) -> str:
    """`text` (one line, a table cell's) as `escape_html` makes prose: a cell holds no block,
    so a line that starts with a fence is no code there."""
    return _escape_prose(text)


def _fenced_block(lines: list[str], opening: re.Match[str], closed: bool) -> str:
    """A fenced code block (opening fence, its lines, the closing fence if it came) as written,
    or as HTML when it holds a `<` or an image anywhere (its info string too); its lines lose
    the fence's own indent, as Markdown takes it off."""
    if not any(mark in line for line in lines for mark in _NEEDS_HTML):
        return "".join(lines)
    indent = len(lines[0]) - len(lines[0].lstrip(" "))
    info = lines[0][opening.end() :].strip().split(" ")[0]
    body = lines[1:-1] if closed else lines[1:]
    code = "".join(line[min(indent, len(line) - len(line.lstrip(" "))) :] for line in body)
    # coloured once closed: an open block grows at every streamed update, lexed anew each time
    return _html_block(code, _LANGUAGE.sub("", info), coloured=closed)


def _indented_block(lines: list[str]) -> str:
    """An indented code block as written, or as HTML when it holds a `<` or an image; its
    blank lines after the code are kept outside it."""
    trailing = len(lines) - len("".join(lines).rstrip().splitlines(keepends=True))
    code, blanks = lines[: len(lines) - trailing], lines[len(lines) - trailing :]
    if not any(mark in line for line in code for mark in _NEEDS_HTML):
        return "".join(lines)
    body = "".join(_INDENTED.sub("", line, count=1) for line in code)
    return _html_block(body, "") + "".join(blanks)


_LANGUAGE = re.compile(r"[^\w+#.-]")


def _html_block(code: str, language: str, coloured: bool = False) -> str:
    """`code` as an HTML code block that shows it as written, coloured as JupyterLab colours
    its own (`code_highlight`), on lines of its own (an HTML block may break into a paragraph,
    and ends at its line with `</pre>`)."""
    attribute = f' class="language-{language}"' if language else ""
    text = highlighted(code, language, _as_html_text) if coloured else _as_html_text(code)
    return f"<pre><code{attribute}>{text}</code></pre>\n"


_HTML_TEXT = str.maketrans({mark: f"&#{ord(mark)};" for mark in "$\\`*_[]~|!"})


def _as_html_text(code: str) -> str:
    """`code` as HTML text that JupyterLab shows as written: escaped, and as character
    references what its math finder (it reads the Markdown before rendering: `$…$` in code was
    taken out and escaped twice) or Markdown would read (the text between inline tags is
    Markdown: `*`, `_`, a table's `|`); MathJax leaves `<code>` alone."""
    return html.escape(code, quote=False).translate(_HTML_TEXT)


def _escape_prose(text: str) -> str:
    """`<` and `$` escaped outside the spans Markdown or MathJax show as written
    (`markdown_spans`), and `<` and images neutralised inside them too."""
    pieces: list[str] = []
    start = 0
    for span in spans(text):
        pieces += [
            _escaped(text[start : span.start]),
            _kept(text[span.start : span.end], span.kind),
        ]
        start = span.end
    pieces.append(_escaped(text[start:]))
    return "".join(pieces)


def _kept(span: str, kind: str) -> str:
    """A span shown as written, its `<` and images neutralised: a code span holding either as
    HTML, math's `<` as TeX's `\\lt` (and `![` parted by an empty group), a link address's
    `<` as `&lt;` (Markdown reads it back as `<`)."""
    if kind in (AUTOLINK, ADDRESS):
        return span[0] + span[1:-1].translate(_URL_QUOTED) + span[-1]
    if not any(mark in span for mark in _NEEDS_HTML):
        return span
    if kind == CODE:
        ticks = len(span) - len(span.lstrip("`"))
        inner = span[ticks:-ticks]
        if inner.startswith(" ") and inner.endswith(" ") and inner.strip():
            inner = inner[1:-1]
        return f"<code>{_as_html_text(inner.replace(chr(10), ' '))}</code>"
    if kind == MATH:
        return span.replace("<", "\\lt ").replace("![", "!{}[")
    return span


_URL_QUOTED = str.maketrans({mark: f"%{ord(mark):02X}" for mark in "$\"'<>[]|\\`!"})
"""A link address or autolink, percent-encoded where Markdown or JupyterLab could read its
characters as anything but an address: two `$` in addresses made one math span for
JupyterLab, which put it back inside the `href` unquoted, and its `"` ended the attribute
(`" onanimationstart="…"` ran, seen in Chromium); `![` was an image where JupyterLab did not
take the span for an autolink; `|` split a table's cell. A browser reads `%24` as `$`."""


_ESCAPED_ANGLE = re.compile(r"(?<!\\)((?:\\\\)*)\\<")
"""`\\<`, Markdown's escaped `<`: its backslash goes with it (before `&lt;` it escaped the `&`,
and "\\<div\\>" showed as `&lt;div>`)."""


def _escaped(prose: str) -> str:
    prose = _ESCAPED_ANGLE.sub(r"\1<", prose)
    prose = prose.replace("<", "&lt;").replace("$", DOLLAR_OUTSIDE_MATH)
    return prose.replace("![", IMAGE_SHOWN_AS_TEXT)


IMAGE_SHOWN_AS_TEXT = "!\\["
"""`![` with its bracket escaped: an image (`![…](https://…)`) is shown as typed, not fetched.
Escaping the `!` instead (`\\![`) let a backslash the model wrote before it escape that
backslash, and the image was fetched (`\\![](…)` became `\\\\![](…)`)."""


DOLLAR_OUTSIDE_MATH = "\\\\$"
"""`\\\\$`: Markdown makes it `\\$`, which JupyterLab's MathJax shows as a plain `$`. A single
backslash (`\\$`) was undone by Markdown first, and MathJax typeset the rest anyway (seen in
JupyterLab 4 through Chromium); `&#36;` too, as it reaches MathJax as `$`."""


def dollars_escaped_in_html(text: str) -> str:
    """`text`, going into raw HTML (the thinking's blockquote), with every `$` outside math
    written `\\$`: Markdown leaves raw HTML as it is, and MathJax shows `\\$` as a plain `$`
    (the answer's Markdown needs two backslashes, `DOLLAR_OUTSIDE_MATH`). Backticks make no
    code in raw HTML, so only math is kept as written. Checked in JupyterLab 4 (Chromium)."""
    pieces: list[str] = []
    start = 0
    for span in spans(text, frozenset({MATH})):
        pieces += [text[start : span.start].replace("$", "\\$"), text[span.start : span.end]]
        start = span.end
    pieces.append(text[start:].replace("$", "\\$"))
    return "".join(pieces)


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
