"""The user's own names in the kernel's namespace, told apart from the ones IPython sets.

Why: a cleanup may let go of what IPython keeps (`Out`, `_5`, `_`), never of what the user
bound; the holders report names the user's variables; both ask the same question here."""

from __future__ import annotations

import re
import sys
from typing import Any

IPYTHON_NAMES = re.compile(r"_\d+|_i\d+")
"""Output and input history entries; any other name IPython set is in `user_ns_hidden` as it
is (a `_` or `Out` the user assigned is theirs: a cycle bound to it, rebound, was missed)."""


def user_variables(shell: Any) -> dict[str, Any]:
    """The user's own names: the namespace without IPython's (`In`, `Out`, `_N`, `_i`, ...)."""
    hidden = getattr(shell, "user_ns_hidden", {})
    return {
        name: value
        for name, value in list(shell.user_ns.items())
        if not IPYTHON_NAMES.fullmatch(name) and not (name in hidden and hidden[name] is value)
    }


def script_variables() -> dict[str, Any] | None:
    """Outside IPython: the running script's module-level names (`__main__`'s globals, not its
    dunders), so a cleanup there notices a deleted or rebound variable too; before, `del a` of
    a cycle holding 400 MiB left it frozen and unscanned, the report saying "nothing new to
    free". None where there is no `__main__`."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    return {name: value for name, value in list(vars(main).items()) if not name.startswith("__")}
