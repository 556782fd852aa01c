"""Option errors every magic words the same way: one line naming the closest real option.

Abbreviations are refused rather than guessed (argparse would take `--verb` for `--verbose`):
a notebook that relies on one breaks when a later option shares its prefix.
"""

from __future__ import annotations

import difflib
import re
from argparse import Namespace
from collections.abc import Iterable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import parse_argstring

_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """' (did you mean --x?)' for the options `name` shortens, else the one closest to it, or
    ''. Dashes are not compared: every option shares them, which would make `--bogus` "close"
    to `--verbose`."""
    by_word = {option.lstrip("-"): option for option in options}
    typed = name.lstrip("-")
    longer = sorted(option for word, option in by_word.items() if typed and word.startswith(typed))
    if 1 <= len(longer) <= 3:
        return f" (did you mean {' or '.join(longer)}?)"
    close = difflib.get_close_matches(typed, list(by_word), n=1)
    return f" (did you mean {by_word[close[0]]}?)" if close else ""


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
        raise UsageError(f"{exc} (see {help_hint})") from None
