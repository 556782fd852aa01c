"""Option errors every magic words the same way: one line naming the closest real option.

Abbreviations are refused rather than guessed (argparse would take `--verb` for `--verbose`):
a notebook that relies on one breaks when a later option shares its prefix.
"""

from __future__ import annotations

import argparse
import difflib
import re
from argparse import Namespace
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import parse_argstring

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")
_BAD_VALUE = re.compile(r"argument (\S+?)(?:/\S+)?: invalid (int|float) value: (.*)$")
_KINDS = {"int": "a whole number", "float": "a number"}
_NO_VALUE = re.compile(r"argument (\S+): expected one argument$")


class OneWaySwitch(argparse.Action):
    """One of a pair of flags that set one option opposite ways (`--think` / `--no-think`):
    typed both ways, the line is refused; the last one had won without a word."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        const: bool,
        default: Any = None,
        help: str | None = None,
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, const=const, default=default, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        before = getattr(namespace, self.dest, None)
        if before is not None and before != self.const:
            other = [
                flag
                for action in parser._actions
                if action.dest == self.dest and action is not self
                for flag in action.option_strings
            ]
            raise UsageError(f"{' or '.join(other)} and {option_string} contradict: keep one")
        setattr(namespace, self.dest, self.const)


def plain_value_error(message: str) -> str:
    """argparse's "argument --top-k: invalid int value: 'abc'" as a user reads it: "--top-k
    needs a whole number, not 'abc'"; its "argument --keep: expected one argument" as "--keep
    needs a value", as %qwen3 words it. Other messages are returned as they are."""
    missing = _NO_VALUE.match(message)
    if missing is not None:
        return f"{max(missing.group(1).split('/'), key=len)} needs a value"
    bad = _BAD_VALUE.match(message)
    if bad is None:
        return message
    name, kind, value = bad.groups()
    return f"{name} needs {_KINDS[kind]}, not {value}"


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """' (did you mean --x?)' for the options `name` shortens, else the one closest to it, or
    ''. Dashes are not compared: every option shares them, which would make `--bogus` "close"
    to `--verbose`. The cutoff is above difflib's 0.6, where `--verb` was "close" to
    `--server` and `--verbos` to `--vars`: a wrong guess misleads more than none."""
    by_word = {option.lstrip("-"): option for option in options}
    typed = name.lstrip("-")
    longer = sorted(option for word, option in by_word.items() if typed and word.startswith(typed))
    if 1 <= len(longer) <= 3:
        return f" (did you mean {' or '.join(longer)}?)"
    close = difflib.get_close_matches(typed, list(by_word), n=1, cutoff=0.7)
    return f" (did you mean {by_word[close[0]]}?)" if close else ""


_SAY_INSTEAD = {
    "no_think": "think=False",
    "enable_thinking": "think",
    "max_tokens": "max_new_tokens",
    "eager": "decode='eager'",
    "fast": "decode='fast'",
}
"""Keywords a Python caller types from the magic's flags or other APIs, and what they mean here."""


def refuse_unknown_keywords(given: Iterable[str], known: Iterable[str]) -> None:
    """A one-line TypeError for the first keyword argument not in `known`, naming the closest
    one: every Python API call words a misspelt keyword the same way."""
    names = set(known)
    for name in sorted(set(given) - names):
        instead = _SAY_INSTEAD.get(name)
        if instead is not None and instead.split("=", 1)[0] in names:
            hint = f" (did you mean {instead}?)"
        else:
            hint = did_you_mean(name, names) or f"; options: {', '.join(sorted(names))}"
        raise TypeError(f"unknown option {name}{hint}")


HELP_FLAGS = frozenset({"-h", "--help"})


def asks_help(line: str, takes_value: Mapping[str, bool] | None = None) -> bool:
    """Whether the magic was given -h or --help, which every command-line tool answers with its
    help (argparse's own answer is switched off in magics).

    Without `takes_value` (a magic that takes only options) any word counts. With it (each
    option and whether it takes a value, as `options_of` gives them) only the options count:
    the words before the first one that is not an option (a prompt) or `--`, an option's value
    skipped (`--system -h hi` is the system prompt "-h")."""
    words = line.split()
    if takes_value is None:
        return any(word in HELP_FLAGS for word in words)
    value_next = False
    for word in words:
        if value_next:
            value_next = False
            continue
        if word in HELP_FLAGS:
            return True
        if word == "--" or not word.startswith("-") or is_number(word):
            return False
        value_next = takes_value.get(word, False)  # `--system=x` carries its value itself
    return False


def is_number(word: str) -> bool:
    """Whether `word` reads as a number (`-5` is a value or text, never an option)."""
    try:
        float(word)
    except ValueError:
        return False
    return True


def plain_usage(magic: Callable[..., Any]) -> Callable[..., Any]:
    """`magic`, its help page's usage block headed "Usage:": IPython's `magic_arguments`
    heads it with reST's "::", which `%qwen3?` showed as a lone line under "Docstring:".
    Goes above `@magic_arguments()`, which writes the docstring."""
    doc = magic.__doc__ or ""
    if doc.startswith("::\n"):
        magic.__doc__ = "Usage:" + doc[2:]
    return magic


def show_help(shell: Any, name: str, magic: Any) -> None:
    """What `%name?` shows: IPython's page for the magic (its options and docstring)."""
    if shell is not None:
        shell.run_line_magic("pinfo", f"%{name}")
    else:
        print(magic.__doc__)


def options_of(magic: Any) -> dict[str, bool]:
    """Every option string the magic's argparse parser knows, and whether it takes a value."""
    parser = getattr(magic, "parser", None)
    if parser is None:
        return {}
    return {
        option: action.nargs != 0 for action in parser._actions for option in action.option_strings
    }


def parse_options(magic: Any, line: str, help_hint: str) -> Namespace:
    """The magic's options from `line`; a bad one is a one-line UsageError ending in
    `(see help_hint)`, an unknown or shortened option naming the closest real one."""
    magic.parser.allow_abbrev = False
    try:
        return parse_argstring(magic, line)
    except UsageError as exc:
        unknown = _UNRECOGNIZED.match(str(exc))
        if unknown and unknown.group(1).startswith("-"):
            name = unknown.group(1).split("=", 1)[0]
            hint = did_you_mean(name, options_of(magic))
            raise UsageError(f"unknown option {name}{hint} (see {help_hint})") from None
        raise UsageError(f"{plain_value_error(str(exc))} (see {help_hint})") from None
