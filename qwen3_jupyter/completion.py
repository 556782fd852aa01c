"""Tab completion for the magics: `%qwen3 --no-<TAB>`, `%qwen3 --model <TAB>`.

Why: after a magic's name IPython offers Python names, which is no help for its options. A
matcher added to IPython's completer offers, on a line that starts with one of our magics, that
magic's own options and, for an option that takes one of a known set, its values: embedded and
locally cached models, dtypes, devices, server URLs, `on|off|status`, and for `--field` the
columns of the `--file` table (models: the embedded ones and those in the Hugging Face cache;
devices: those torch sees, once it is imported). A path (`--file`, `--out`) and the prompt
itself are left to IPython's own completion. Nothing here imports torch; the Hugging Face
cache is only listed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from IPython.core.completer import (
    CompletionContext,
    SimpleCompletion,
    SimpleMatcherResult,
    context_matcher,
)

from . import lifecycle
from .embedded import EMBEDDED
from .magic_args import options_of
from .models import DTYPE_ALIASES, DTYPES
from .prompt_files import field_names

MAGIC_NAMES = {
    "%qwen3": "qwen3",
    "%%qwen3": "qwen3",
    "%qwen3_clean": "qwen3_clean",
    "%%qwen3_clean": "qwen3_clean",
    "%qwen3_gauge": "qwen3_gauge",
    "%qwen3_autoclean": "qwen3_autoclean",
}
CELL_ONLY = ("--drop", "--keep")
"""`%%qwen3_clean` options the line form refuses."""
SERVERS = ("http://localhost:8000/v1", "http://localhost:30000/v1")
"""vLLM's and SGLang's default OpenAI-compatible addresses."""


def load(ip: Any) -> None:
    """Add one matcher to IPython's completer; unloading removes exactly it."""
    matcher = _matcher(ip)
    ip.Completer.custom_matchers.append(matcher)
    lifecycle.on_unload("qwen3-completion", lambda: _remove(ip, matcher))


def _remove(ip: Any, matcher: Callable[..., Any]) -> None:
    matchers = ip.Completer.custom_matchers
    matchers[:] = [m for m in matchers if m is not matcher]


def _matcher(ip: Any) -> Callable[[CompletionContext], SimpleMatcherResult]:
    @context_matcher(identifier="qwen3_jupyter.magic_options")
    def magic_options(context: CompletionContext) -> SimpleMatcherResult:
        """Options and values on a line that starts with one of our magics. When it has
        any, nothing else is offered: Jedi would add Python keywords, and for `--` every
        builtin name (it reads `--abs` as a double negation)."""
        typed = context.text_until_cursor
        words = typed.split(None, 1)
        name = MAGIC_NAMES.get(words[0]) if words else None
        magic = ip.magics_manager.magics["line"].get(name) if name else None
        options = _options(magic) if magic is not None else {}
        if words and words[0] == "%qwen3_clean":  # --drop and --keep are the cell form's
            options = {o: takes for o, takes in options.items() if o not in CELL_ONLY}
        found = (
            candidates(typed, context.token, options, _values(name or "", ip, typed))
            if magic is not None
            else None
        )
        if not found:
            return {"completions": [], "suppress": False}
        completions = [SimpleCompletion(v, type="param") for v in found]
        return {"completions": completions, "suppress": True, "ordered": True}

    return magic_options


def candidates(
    typed: str, symbol: str, options: dict[str, bool], values: dict[str, Iterable[str]]
) -> list[str] | None:
    """What may come at the cursor after `typed` (the magic's line up to it): an option, or a
    value of the option before it; None where IPython's own completion should answer (a path,
    the prompt). `symbol` is IPython's token at the cursor, which stops at `:`, `=` or `/`:
    each candidate is cut to match it (`random:Qw` → `Qwen3-1.7B`)."""
    words = _words(typed)
    if words is None:  # inside a quoted value (`--system "You are`): nothing to offer
        return None
    current = "" if not typed or typed[-1].isspace() else words.pop()
    if not words:  # still typing the magic's name
        return None
    arguments = words[1:]
    expecting = _expected_value(arguments, options)
    if expecting is not None:
        if expecting not in values:  # a path or free text: IPython's own completion
            return None
        found = [v for v in values[expecting] if v.startswith(current)]
    elif _prompt_started(arguments, options):
        return None
    elif current.startswith("-") and "=" in current:
        option, _, partial = current.partition("=")
        found = [f"{option}={v}" for v in values.get(option, ()) if v.startswith(partial)]
    elif current.startswith("-") or not current:
        found = [v for v in (*options, *values.get("", ())) if v.startswith(current)]
    else:  # a positional value (`on`), or the first word of the prompt
        found = [v for v in values.get("", ()) if v.startswith(current)]
    cut = len(current) - len(symbol) if current.endswith(symbol) else 0
    return sorted({v[cut:] for v in found}, key=_option_order) or None


def _words(typed: str) -> list[str] | None:
    """The line's words as the magic reads them (a quoted value is one word); None inside an
    unclosed quote."""
    lexer = shlex.shlex(typed, posix=False)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:
        return None


def _expected_value(words: list[str], options: dict[str, bool]) -> str | None:
    """The option whose value comes next, if the last word is an option that takes one."""
    if words and options.get(words[-1], False):
        return words[-1]
    return None


def _prompt_started(words: list[str], options: dict[str, bool]) -> bool:
    """Whether the prompt has begun: a word that is neither an option nor an option's value."""
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--" or word.split("=", 1)[0] not in options:
            return True
        index += 2 if options[word.split("=", 1)[0]] and "=" not in word else 1
    return False


def _option_order(value: str) -> tuple[bool, str]:
    return (value.startswith("-"), value)


def _options(magic: Any) -> dict[str, bool]:
    """Each option string of the magic but help, and whether it takes a value."""
    return {o: takes for o, takes in options_of(magic).items() if o not in ("-h", "--help")}


def _values(magic_name: str, shell: Any, typed: str = "") -> dict[str, Iterable[str]]:
    """Known values per option ("" for a positional argument); `typed` is the line so far
    (`--field` offers the columns of the `--file` it names)."""
    if magic_name == "qwen3_autoclean":
        return {"": ("on", "off", "status")}
    if magic_name != "qwen3":
        return {}
    return {
        "--model": _OnDemand(lambda: [*EMBEDDED, *cached_models()]),
        "--dtype": [*DTYPES, *DTYPE_ALIASES],
        "--device": _OnDemand(_devices),
        "--server": [*_configured_servers(shell), *SERVERS],
        "--field": _OnDemand(lambda: _fields_of_file(typed, shell)),
    }


def _fields_of_file(typed: str, shell: Any) -> list[str]:
    """The column or field names of the file `--file` names earlier in `typed` (its `$name`
    or `{expression}` expanded as the magic will), quoted where they hold a space."""
    words = _words(typed) or []
    given = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--file"]
    given += [word.split("=", 1)[1] for word in words if word.startswith("--file=")]
    if not given:
        return []
    path = given[-1].strip("'\"")
    if "$" in path or "{" in path:
        with contextlib.suppress(Exception):  # as the magic does: a value it cannot expand
            path = shell.var_expand(path)  # stays as typed
    return [shlex.quote(name) for name in field_names(path)]


def _devices() -> list[str]:
    """cpu, and cuda with each GPU's index where torch (already imported: completing must not
    import it) sees GPUs; cuda alone while torch is not imported yet."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not hasattr(cuda, "device_count"):
        return ["cpu", "cuda"]
    count = cuda.device_count() if cuda.is_available() else 0
    return ["cpu", *(["cuda"] if count else []), *(f"cuda:{i}" for i in range(count))]


class _OnDemand:
    """Values produced only when iterated: the Hugging Face cache is listed when `--model`'s
    values are wanted, not on every Tab after a magic."""

    def __init__(self, produce: Callable[[], list[str]]) -> None:
        self._produce = produce

    def __iter__(self) -> Iterator[str]:
        return iter(self._produce())


def cached_models() -> list[str]:
    """Model ids in the Hugging Face cache (its `models--Org--Name` folders)."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        folders = [p.name for p in Path(HF_HUB_CACHE).iterdir() if p.name.startswith("models--")]
    except (ImportError, OSError):
        return []
    return sorted("/".join(name.split("--")[1:]) for name in folders)


def _configured_servers(shell: Any) -> list[str]:
    configured = [os.environ.get("QWEN3_JUPYTER_SERVER", "")]
    magics = shell.magics_manager.registry.get("Qwen3Magics")
    configured.append(getattr(magics, "server", "") or "")
    return [url for url in configured if url]
