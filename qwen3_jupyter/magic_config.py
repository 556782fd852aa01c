"""The configuration's `Qwen3Magics` values, a value its option refuses set aside with a line.

Why: `c.Qwen3Magics.stream_interval = '0.5s'` in a config file made traitlets raise while the
magics were built, so the extension failed to load at kernel start; the notebook only saw
"Line magic function `%qwen3` not found" (the reason was in the server's terminal). A misspelt
option (`c.Qwen3Magics.modle`) was a warning there too. Now the extension loads with that
option's default and says why, in the cell that loaded it, or, when the kernel loaded it at
start, at the next `%qwen3` call (once; not if `%config` set that option since).
"""

from __future__ import annotations

from typing import Any

from traitlets import TraitError
from traitlets.config import Config, Configurable

from . import display
from .magic_args import did_you_mean

SECTION = "Qwen3Magics"


_UNSAID: dict[str, str] = {}
"""The refusals of a kernel's start, by option, until the next `%qwen3` call says them."""


def configured_magics(kind: type[Configurable], shell: Any) -> tuple[Any, dict[str, str]]:
    """`kind(shell=shell)` with every value of the shell's configuration section that it takes,
    and a line for each one it does not, by option."""
    config = shell.config
    section = dict(config[SECTION]) if SECTION in config else {}
    if not section:
        return kind(shell=shell, config=config), {}
    others = Config(config)
    others[SECTION] = Config()
    made = kind(shell=shell, config=others)
    options = sorted(made.trait_names(config=True))
    refused = {}
    for name, value in section.items():
        if name not in options:
            refused[name] = (
                f"c.{SECTION}.{name} is not an option{did_you_mean(name, options)}: ignored"
            )
            continue
        try:  # as traitlets loads it: a command line's `--Qwen3Magics.x=0.5` is a deferred str
            made.update_config(Config({SECTION: {name: value}}))
        except TraitError as exc:
            default = made.trait_defaults(name)
            shown = str.__repr__(value) if isinstance(value, str) else repr(value)
            refused[name] = (  # (a command line's value is a str subclass: shown as a str)
                f"c.{SECTION}.{name} = {shown} is refused ({_why(exc, name)}): using "
                f"{default!r}; fix it where it is set (a config file, the kernel's command "
                f"line), or %config {SECTION}.{name} = …"
            )
    return made, refused


def say_or_hold(refused: dict[str, str]) -> None:
    """Say the refusals now in a cell (`%load_ext`, `%reload_ext`); at a kernel's start, where
    no cell shows them, hold them for the next `%qwen3` call. Either way, replace any held."""
    _UNSAID.clear()
    if display.in_a_cell():
        for line in refused.values():
            display.info(line)
    else:
        _UNSAID.update(refused)


def take_unsaid(magics: Configurable) -> list[str]:
    """The held refusals, gone from here once taken (a call says them once), less those of
    an option `%config` set since: a value taken is merged into `magics.config`, and a refused
    one never is (set to the value it already had, no change event said so)."""
    section = magics.config.get(SECTION, {})
    unsaid = [line for name, line in _UNSAID.items() if name not in section]
    _UNSAID.clear()
    return unsaid


def forget() -> None:
    """Drop the held refusals (the extension unloaded)."""
    _UNSAID.clear()


def _why(exc: TraitError, name: str) -> str:
    """The refusal without its lead: traitlets' ("The 'x' trait of a Qwen3Magics instance
    expected a float, …") or a validator's own ("Qwen3Magics.x must be …")."""
    text = str(exc).rstrip(".")
    marker = " instance "
    if marker in text:
        return text.split(marker, 1)[1]
    return text.removeprefix(f"{SECTION}.{name} ")
