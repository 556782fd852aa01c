"""The spans of a paragraph that Markdown or MathJax show as written: code spans, math,
autolinks and link addresses, found in one pass.

Why a scanner and not one regular expression: an opener without its closer (a `\\(` or a run
of backticks the text never closes) made the expression look to the end of the paragraph from
every such opener, so an answer of 180 KB took 47 s to show and one of 280 KB with 600
unmatched backtick runs 722 s. Here each kind of closer is looked for at most once past the
point where it was last missing, which keeps the pass linear.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

CODE, MATH, AUTOLINK, ADDRESS = "code", "math", "autolink", "address"
ALL_KINDS = frozenset({CODE, MATH, AUTOLINK, ADDRESS})

_PARAGRAPH_BREAK = re.compile(r"(\n[ \t]*\n)")
_CANDIDATE = re.compile(r"`|\$|\\\\[(\[]|\\begin\{|<(?=(?:https?|ftp|mailto):)|(?<=\])\(")
_BACKTICKS = re.compile(r"`+")
_INLINE_MATH = re.compile(r"\$(?!\s)[^$\n`]*?(?<![\s\\])\$(?!\d)")
_BEGIN = re.compile(r"\\begin\{([a-z]*\*?)\}")
_AUTOLINK = re.compile(r"<(?:https?|ftp|mailto):[^\s<>]*>")
_ADDRESS = re.compile(r"\([^()\s]*\)")
_CLOSERS = {"$$": "$$", "\\\\(": "\\\\)", "\\\\[": "\\\\]"}
"""Display math and JupyterLab's `\\\\(` and `\\\\[` (one backslash is Markdown's escape)."""


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


def spans(text: str, kinds: frozenset[str] = ALL_KINDS) -> Iterator[Span]:
    """The kept spans of `text`, in order, none across a blank line (Markdown's paragraph)."""
    offset = 0
    for part in _PARAGRAPH_BREAK.split(text):
        if not _PARAGRAPH_BREAK.fullmatch(part):
            for span in _paragraph_spans(part, kinds):
                yield Span(offset + span.start, offset + span.end, span.kind)
        offset += len(part)


@dataclass
class _Missing:
    """Closers already looked for past a point and not there (looking again is pointless),
    and the paragraph's backtick runs by length, found once."""

    closers: set[str] = field(default_factory=set)
    runs: dict[int, list[int]] | None = None


def _paragraph_spans(text: str, kinds: frozenset[str]) -> Iterator[Span]:
    missing = _Missing()
    position = 0
    while candidate := _CANDIDATE.search(text, position):
        start = candidate.start()
        found = _span_at(text, start, kinds, missing)
        if found is None:
            position = start + 1
            continue
        yield found
        position = found.end


def _span_at(text: str, start: int, kinds: frozenset[str], missing: _Missing) -> Span | None:
    """The span that opens at `start`, trying the kinds in Markdown's order of precedence."""
    mark = text[start]
    if mark == "`":
        return _code_span(text, start, missing) if CODE in kinds else None
    if _escaped_at(text, start):
        return None  # `\<`, `\$`: text to Markdown
    if mark == "<":
        found = _AUTOLINK.match(text, start)
        return Span(start, found.end(), AUTOLINK) if found and AUTOLINK in kinds else None
    if mark == "(":
        found = _ADDRESS.match(text, start)
        return Span(start, found.end(), ADDRESS) if found and ADDRESS in kinds else None
    if MATH not in kinds:
        return None
    if mark == "$":
        if text.startswith("$$", start):
            end = _closed_by(text, start + 3, "$$", missing)
            if end is not None:
                return Span(start, end, MATH)
        found = _INLINE_MATH.match(text, start)
        return Span(start, found.end(), MATH) if found else None
    begin = _BEGIN.match(text, start)
    if begin is not None:
        if _closed_by(text, begin.end(), "\\end{", missing) is None:
            return None  # no environment ends after it: every name's search would fail
        end = _closed_by(text, begin.end(), f"\\end{{{begin.group(1)}}}", missing)
        return Span(start, end, MATH) if end is not None else None
    opener = text[start : start + 3]
    if opener in _CLOSERS:
        end = _closed_by(text, start + 4, _CLOSERS[opener], missing)
        return Span(start, end, MATH) if end is not None else None
    return None


def _escaped_at(text: str, index: int) -> bool:
    """Whether the character at `index` is escaped: an odd run of backslashes before it
    (`C:\\\\` then a backtick opens a code span)."""
    backslashes = 0
    while index - backslashes > 0 and text[index - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _closed_by(text: str, after: int, closer: str, missing: _Missing) -> int | None:
    """The end of the first `closer` at or after `after`, remembering when there is none."""
    if closer in missing.closers:
        return None
    found = text.find(closer, after)
    if found < 0:
        missing.closers.add(closer)
        return None
    return found + len(closer)


def _code_span(text: str, start: int, missing: _Missing) -> Span | None:
    """A code span: a run of backticks (not escaped, not inside a longer run) closed by the
    next run of the same length."""
    if (start and text[start - 1] == "`") or _escaped_at(text, start):
        return None
    if missing.runs is None:
        missing.runs = {}
        for run in _BACKTICKS.finditer(text):
            missing.runs.setdefault(run.end() - run.start(), []).append(run.start())
    length = len(_BACKTICKS.match(text, start).group())  # type: ignore[union-attr]
    starts = missing.runs.get(length, [])
    following = bisect.bisect_right(starts, start)
    if following == len(starts):
        return None
    return Span(start, starts[following] + length, CODE)
