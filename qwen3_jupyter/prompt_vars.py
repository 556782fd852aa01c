"""`%qwen3 --vars`: fill `{expression}` in a prompt from the notebook's variables.

Prompts are sent as typed unless asked: IPython's own expansion of magic lines (`$name` and
`{name}`, applied only when every one of them resolves) would turn LaTeX such as `$x^2$` and
code such as `f'{x}'` into other text without a word. With `--vars` the rule is an f-string's:
`{expression}` is evaluated in the notebook (`{df.head()}`, `{x:.2f}`, `{name!r}`), `{{` and `}}`
are literal braces, `$` is always literal, and a name that does not exist is an error, never a
silent leftover.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}
_BRACES_HINT = "write {{ and }} for literal braces"


class PromptVarsError(ValueError):
    """A `{...}` in the prompt that cannot be filled; the message is one line."""


def fill(text: str, namespace: Mapping[str, Any]) -> str:
    """`text` with every `{expression}` replaced by its value in `namespace`, as an f-string."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:  # a lone `{` or `}`
        raise PromptVarsError(
            f"--vars: the braces do not pair up ({exc}): {_BRACES_HINT}"
        ) from None
    parts: list[str] = []
    for literal, expression, spec, conversion in fields:
        parts.append(literal)
        if expression is None:
            continue
        value = _evaluate(expression, namespace)
        if conversion:
            value = _CONVERSIONS[conversion](value)
        if spec and "{" in spec:  # a nested field, as in {x:{width}}
            spec = fill(spec, namespace)
        parts.append(_format(value, spec or "", expression))
    return "".join(parts)


def _evaluate(expression: str, namespace: Mapping[str, Any]) -> Any:
    shown = "{" + expression + "}"
    if not expression.strip():
        raise PromptVarsError(f"--vars: {{}} names nothing: {_BRACES_HINT}")
    try:
        return eval(expression, dict(namespace))  # the user's own notebook code, as typed
    except SyntaxError:
        raise PromptVarsError(
            f"--vars: {shown} is not a Python expression: {_BRACES_HINT}"
        ) from None
    except NameError as exc:
        raise PromptVarsError(f"--vars: {shown}: {exc} in this notebook ({_BRACES_HINT})") from None
    except Exception as exc:  # the expression's own error, e.g. a KeyError
        raise PromptVarsError(f"--vars: {shown} raised {type(exc).__name__}: {exc}") from None


def _format(value: Any, spec: str, expression: str) -> str:
    try:
        return format(value, spec)
    except (ValueError, TypeError) as exc:
        raise PromptVarsError(f"--vars: {{{expression}:{spec}}}: {exc}") from None
