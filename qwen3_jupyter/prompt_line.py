"""How a `%qwen3` line splits into options and the prompt, before argparse sees it.

Options come first, the prompt is the rest of the line taken verbatim (apostrophes, quotes
and dashes inside a prompt are never parsed); `--` ends the options explicitly. Option values
are read as written (a Windows path keeps its backslashes) or shell-style when quoted. Options
typed after a prompt are refused with the line that means them, not sent as text; and a line
ending in `?` is a prompt, not IPython's help request.
"""

from __future__ import annotations

import io
import re
import shlex
import tokenize
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.utils.text import DollarFormatter

from .magic_args import did_you_mean, is_number, options_of, plain_value_error

_TOKEN = re.compile(r"\S+")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")


def expander(namespace: dict[str, Any]) -> Callable[[str], str]:
    """IPython's expansion of a magic line (`$name`, `{expression}`; the text unchanged unless
    every one of them resolves), for option values only: the prompt is text for the model."""
    formatter = DollarFormatter()

    def expand(value: str) -> str:
        try:
            return formatter.vformat(value, args=[], kwargs=namespace)
        except Exception:  # what IPython does: leave a value it cannot expand as typed
            return value

    return expand


def parse_line(
    magic: Any, line: str, cell: str | None, expand: Callable[[str], str] | None = None
) -> tuple[Namespace, str]:
    """Split `line` into options (parsed by the magic's argparse parser) and the prompt text.

    `expand` is applied to option values other than --system (paths, URLs, numbers)."""
    takes_value = options_of(magic)
    argv, position, ended = _read_options(line, 0, takes_value, expand)
    try:
        args = magic.parser.parse_args(argv)
    except UsageError as exc:
        raise UsageError(f"{plain_value_error(str(exc))} (see %qwen3?)") from None
    prompt = line[position:].strip()
    _refuse_split_path(getattr(args, "file", None), prompt)
    if not ended:  # `%%qwen3 Summarise --no-think`: the first line's text is prompt text too
        magic_name = "%qwen3" if cell is None else "%%qwen3"
        _refuse_trailing_options(magic, magic_name, line[:position], prompt, takes_value)
    if cell is not None:  # the body's first line keeps its indentation (pasted code)
        prompt = "\n".join(p for p in (prompt, _LEADING_BLANK_LINES.sub("", cell.rstrip())) if p)
    return args, _unquoted_empty(prompt)


def _read_options(
    line: str,
    position: int,
    takes_value: dict[str, bool],
    expand: Callable[[str], str] | None = None,
) -> tuple[list[str], int, bool]:
    """The options at the start of `line[position:]` as argv, where the prompt starts, and
    whether `--` ended them (the rest is text even if it looks like options)."""
    argv: list[str] = []
    while True:
        match = _TOKEN.search(line, position)
        if match is None:
            return argv, len(line), False
        token = match.group()
        if token == "--":
            return argv, match.end(), True
        if not token.startswith("-") or is_number(token):
            return argv, match.start(), False
        name = token.split("=", 1)[0]
        if name not in takes_value:
            meant = did_you_mean(name, takes_value)  # a misspelt option is not a prompt
            prose = "" if meant else " — put -- before a prompt that starts with '-'"
            raise UsageError(f"unknown option {name}{meant}; see %qwen3?{prose}")
        position = match.end()
        if takes_value[name]:
            if "=" in token:  # --system="be brief": the value starts right after the "="
                position = match.start() + len(name) + 1
            value, position = _read_value(line, position, name, allow_empty="=" in token)
            # One argument: a value starting with "-" (--system "--x") stays a value.
            argv.append(f"{name}={_expanded(name, value, expand)}")
        elif "=" in token:
            raise UsageError(f"{name} takes no value (see %qwen3?)")
        else:
            argv.append(token)


def _refuse_split_path(path: str | None, prompt: str) -> None:
    """`--file data/my prompts.txt`: the space split the path, and the rest read as a prompt
    (advice followed: "give either a prompt or --file"). Where the path does not exist but
    it with the next words does, say to quote it."""
    if not path or not prompt or Path(path).expanduser().exists():
        return
    words = prompt.split()
    for count in range(1, len(words) + 1):
        whole = " ".join([path, *words[:count]])
        if Path(whole).expanduser().exists():
            raise UsageError(
                f"--file {path}: no such file, but {whole!r} is one: quote a path with spaces, "
                f"--file {shlex.quote(whole)}"
            )


def _refuse_trailing_options(
    magic: Any, magic_name: str, options: str, prompt: str, takes_value: dict[str, bool]
) -> None:
    """`%qwen3 Why? --no-think`: options typed after the prompt would silently become prompt
    text (and the call think for 512 tokens); refuse, showing the line that means them."""
    tail = _trailing_options(magic, prompt, takes_value)
    if tail is None:
        return
    head = prompt[:tail].strip()
    fixed = " ".join(part for part in (options.strip(), prompt[tail:].strip(), head) if part)
    raise UsageError(
        f"options go before the prompt: {magic_name} {fixed}; put -- first to send them as text"
    )


def _trailing_options(magic: Any, prompt: str, takes_value: dict[str, bool]) -> int | None:
    """Where the known options that end `prompt` start, if any: the earliest word from which
    the rest of the prompt reads as options and nothing else, each a switch (`--no-think`) or
    given a number or size (`--max-new-tokens 8`, `--memory-budget 2GiB`). A word after a
    value-taking option is text too (`What does pip install --system do`)."""
    for match in _TOKEN.finditer(prompt):
        if match.start() == 0 or match.group().split("=", 1)[0] not in takes_value:
            continue
        try:
            argv, end, ended = _read_options(prompt, match.start(), takes_value)
            tail = prompt[match.start() :]
            if end < len(prompt) or ended or not _plainly_options(tail, takes_value):
                continue
            magic.parser.parse_args(argv)
        except UsageError:  # not options after all (an unknown word, a bad value): text
            continue
        return match.start()
    return None


_PLAIN_VALUE = re.compile(r"""-?[\d.,_]+(?:[kKMGT]i?B?)?|["'].*""")
"""A value no sentence has after a flag's name: a number, a size, or a quoted text."""


def _plainly_options(tail: str, takes_value: dict[str, bool]) -> bool:
    """Whether every value in `tail` (options only, see `_trailing_options`) is written as
    only a value is: `--seed 5`, `--memory-budget 2GiB`, `--system="be brief"`, `--system
    'be brief'`, not a bare word (`pip install --system do`)."""
    words = _TOKEN.findall(tail)
    for index, word in enumerate(words):
        name, given, _ = word.partition("=")
        if not name.startswith("--") or given:
            continue
        following = words[index + 1] if index + 1 < len(words) else ""
        if takes_value.get(name) and not _PLAIN_VALUE.fullmatch(following):
            return False
    return True


_QUOTED_BLANK = re.compile(r"""^(["'])\s*\1$""")


def _unquoted_empty(prompt: str) -> str:
    """`%qwen3 ""` asks nothing: a quoted empty (or blank) prompt is an empty one, refused as
    such, not two quote characters sent to the model."""
    return "" if _QUOTED_BLANK.match(prompt) else prompt


def _expanded(name: str, value: str, expand: Callable[[str], str] | None) -> str:
    return value if expand is None or name == "--system" else expand(value)


def _read_value(line: str, position: int, name: str, allow_empty: bool = False) -> tuple[str, int]:
    """The option value starting at `position` and where it ends: a word as written (a
    Windows path keeps its backslashes), or shell-style when it has quotes ("be brief",
    'it'"'"'s', "say \"hi\"")."""
    rest = line[position:]
    stripped = rest if allow_empty else rest.lstrip()
    start = position + len(rest) - len(stripped)
    if not stripped or stripped[0].isspace():
        if allow_empty:
            return "", start
        raise UsageError(f"{name} needs a value (see %qwen3?)")
    match = _TOKEN.match(line, start)
    assert match is not None
    if not any(quote in match.group() for quote in "\"'"):
        return match.group(), match.end()
    stream = io.StringIO(stripped)
    lexer = shlex.shlex(stream, posix=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        value = lexer.get_token()
    except ValueError:
        raise UsageError(
            f'{name}: a quote is not closed (write a quote inside a value as \\" within '
            "double quotes)"
        ) from None
    return value or "", start + stream.tell()


_PROMPT_LINE = re.compile(
    r"^(\s*)((?:[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*=\s*)?)"
    r"%qwen3[ \t]+(?!\?+\s*$)(.*\S)\s*$"
)
"""A `%qwen3 PROMPT` line, or one assigning its value (`r = %qwen3 PROMPT`, IPython's own
`x = %magic` form), but not `%qwen3?` or `%qwen3 ?` (help)."""


def protect_prompt_lines(lines: list[str]) -> list[str]:
    """Turn `%qwen3 PROMPT` lines into explicit magic calls before IPython reads them.

    IPython treats a line ending in `?` as a help request (`%qwen3 What is a kernel?` would
    show help for `kernel`, and so would `r = %qwen3 What is it?`, which stays an assignment);
    prompts often end in `?`. `%qwen3?` alone still shows help. A
    cell magic's body (`%%writefile`, `%%qwen3`'s prompt) and a line inside a string are text
    and stay as typed; a cell magic that runs its body as Python transforms it again.
    """
    if (lines and lines[0].startswith("%%")) or not any(map(_PROMPT_LINE.match, lines)):
        return lines  # (every cell passes here: most are tokenized for nothing otherwise)
    in_strings = _lines_in_strings(lines)
    out = []
    for number, line in enumerate(lines):
        match = None if number in in_strings else _PROMPT_LINE.match(line)
        if match:
            indent, target, rest = match.groups()
            line = f"{indent}{target}get_ipython().run_line_magic('qwen3', {rest!r})\n"
        out.append(line)
    return out


def _lines_in_strings(lines: list[str]) -> set[int]:
    """The (0-based) lines that start inside a string spanning lines (`\"\"\"…\"\"\"`, or an
    f-string's parts on Python 3.12+). Lines after what Python cannot tokenize (an apostrophe
    in a prompt) are not counted: they are read as lines, as before."""
    starts: list[int] = []  # open f-strings' first lines (Python 3.12+ tokenizes their parts)
    inside: set[int] = set()
    fstring_start = getattr(tokenize, "FSTRING_START", None)
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    try:
        for token in tokenize.generate_tokens(iter(lines).__next__):
            first, last = token.start[0], token.end[0]
            if token.type == fstring_start:
                starts.append(first)
                continue
            if token.type == fstring_end and starts:
                first = starts.pop()
            elif token.type != tokenize.STRING:
                continue
            inside.update(range(first, last))  # 1-based rows after the first, as 0-based
    except (tokenize.TokenError, SyntaxError):
        pass
    return inside
