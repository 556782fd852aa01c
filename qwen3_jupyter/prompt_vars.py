"""`%qwen3 --vars`: fill `{expression}` in a prompt from the notebook's variables.

Prompts are sent as typed unless asked: IPython's own expansion of magic lines (`$name` and
`{name}`, applied only when every one of them resolves) would turn LaTeX such as `$x^2$` and
code such as `f'{x}'` into other text without a word. With `--vars` the rule is an f-string's:
`{expression}` is evaluated in the notebook (`{df.head()}`, `{now.strftime('%H:%M')}`,
`{x:.2f}`, `{name!r}`, `{x=}` for `x=3.14`), `{{` and `}}` are literal braces, `$` is always
literal, and a name that does not exist is an error, never a silent leftover.

Why not `string.Formatter`: its grammar ends a field at the first `!` or `:`, so `{a != b}`,
`{t.strftime('%H:%M')}` and `{'!'.join(names)}` would break; an f-string's field ends only at a
`!` or `:` outside brackets and strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_CONVERSIONS: dict[str, Callable[[Any], str]] = {"r": repr, "s": str, "a": ascii}
_BRACES_HINT = "write {{ and }} for literal braces"
_OPENING, _CLOSING = "([{", ")]}"


class PromptVarsError(ValueError):
    """A `{...}` in the prompt that cannot be filled; the message is one line."""


@dataclass(frozen=True)
class _Field:
    expression: str
    conversion: str
    spec: str
    text: str
    """The field as typed, braces included, for messages."""
    echo: str = ""
    """`{x=}` (an f-string's self-documenting field): the `x=` written before the value."""


def fill(text: str, namespace: Mapping[str, Any]) -> str:
    """`text` with every `{expression}` replaced by its value in `namespace`, as an f-string."""
    parts: list[str] = []
    for piece in _pieces(text):
        if isinstance(piece, str):
            parts.append(piece)
            continue
        value = _evaluate(piece, namespace)
        parts.append(piece.echo)
        if piece.conversion:
            value = _CONVERSIONS[piece.conversion](value)
        elif piece.echo and not piece.spec:  # as an f-string: `{x=}` shows the value's repr
            value = repr(value)
        spec = fill(piece.spec, namespace) if "{" in piece.spec else piece.spec
        parts.append(_format(value, spec, piece))
    return "".join(parts)


def _pieces(text: str) -> list[str | _Field]:
    """Literal text and fields, in order."""
    pieces: list[str | _Field] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in "{}" and text[index + 1 : index + 2] == char:  # {{ or }}
            literal.append(char)
            index += 2
        elif char == "}":
            raise PromptVarsError(f"--vars: a single }} with no {{ before it: {_BRACES_HINT}")
        elif char == "{":
            field, index = _field(text, index)
            pieces += ["".join(literal), field]
            literal = []
        else:
            literal.append(char)
            index += 1
    pieces.append("".join(literal))
    return [p for p in pieces if p != ""]


def _field(text: str, start: int) -> tuple[_Field, int]:
    """The field opening at `text[start]` and the index after its closing brace."""
    depth, quote, index = 0, "", start + 1
    marks: dict[str, int] = {}  # where the conversion and the spec begin, at depth 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif "spec" in marks:
            if char == "{":
                depth += 1
            elif char == "}":
                if depth == 0:
                    return _made(text, start, index, marks), index + 1
                depth -= 1
        elif char in _OPENING:
            depth += 1
        elif char in _CLOSING and depth > 0:
            depth -= 1
        elif char == "}":
            return _made(text, start, index, marks), index + 1
        elif char == "!" and depth == 0 and text[index + 1 : index + 2] != "=":
            marks.setdefault("conversion", index)
        elif char == ":" and depth == 0 and text[index + 1 : index + 2] != "=":
            marks["spec"] = index
        index += 1
    shown = text[start : start + 40]
    raise PromptVarsError(f"--vars: {shown!r} has no closing }}: {_BRACES_HINT}")


def _made(text: str, start: int, end: int, marks: dict[str, int]) -> _Field:
    spec_at = marks.get("spec", end)
    conversion_at = marks.get("conversion", spec_at)
    shown = text[start : end + 1]
    conversion = text[conversion_at + 1 : spec_at].strip() if conversion_at < spec_at else ""
    if conversion_at < spec_at and conversion not in _CONVERSIONS:
        raise PromptVarsError(f"--vars: {shown}: a conversion is !r, !s or !a")
    spec = text[spec_at + 1 : end] if spec_at < end else ""
    expression = text[start + 1 : conversion_at]
    bare = expression.rstrip()
    if bare.endswith("=") and not bare.endswith(("==", "!=", "<=", ">=")):
        return _Field(bare[:-1], conversion, spec, shown, echo=expression)
    return _Field(expression, conversion, spec, shown)


def _evaluate(field: _Field, namespace: Mapping[str, Any]) -> Any:
    if not field.expression.strip():
        raise PromptVarsError(f"--vars: {field.text} names nothing: {_BRACES_HINT}")
    try:
        code = compile(field.expression.strip(), "<--vars>", "eval")
    except SyntaxError:
        raise PromptVarsError(
            f"--vars: {field.text} is not a Python expression: {_BRACES_HINT}"
        ) from None
    try:
        return eval(code, dict(namespace))  # the user's own notebook code, as typed
    except NameError as exc:
        raise PromptVarsError(
            f"--vars: {field.text}: {_first_line(exc)} in this notebook ({_BRACES_HINT})"
        ) from None
    except Exception as exc:  # the expression's own error, e.g. a KeyError
        raise PromptVarsError(
            f"--vars: {field.text} raised {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _format(value: Any, spec: str, field: _Field) -> str:
    try:
        return format(value, spec)
    except (ValueError, TypeError) as exc:
        # Code with a dict in it ({"a": 1}) reads as a field with a format spec.
        raise PromptVarsError(
            f"--vars: {field.text}: {_first_line(exc)} ({_BRACES_HINT})"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
