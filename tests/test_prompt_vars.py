"""`--vars` fills a prompt as an f-string would (the magic's own tests are in test_magics.py)."""

from __future__ import annotations

import datetime

import pytest

from qwen3_jupyter.prompt_vars import PromptVarsError, fill

NAMESPACE = {
    "x": 5,
    "y": 6,
    "width": 8,
    "price": 2.5,
    "names": ["a", "b"],
    "table": {"k:v": 1},
    "now": datetime.datetime(2026, 11, 27, 13, 5),
}


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ("{x} and $x^2$", "5 and $x^2$"),
        ("{x != y}", "True"),  # `!=` is not a conversion
        ("{now.strftime('%H:%M')}", "13:05"),  # a `:` inside a string is not a format spec
        ("{table.get('k:v')}", "1"),
        ("{'!'.join(names)}", "a!b"),
        ("{ {'a': 1}['a'] }", "1"),  # braces of a dict inside the field
        ("{(lambda v: v * 2)(x)}", "10"),
        ("{'}'}", "}"),
        ("{price:.2f}", "2.50"),
        ("{x:>{width}}|", "       5|"),  # a nested field in the spec
        ("{names!r:>12}", "  ['a', 'b']"),
        ("{{literal}} {names[0:1]}", "{literal} ['a']"),
        ("{x=}", "x=5"),  # self-documenting: refused as "not a Python expression" before
        ("{ names = }", " names = ['a', 'b']"),
        ("{price=:.1f} {names[0]=!s}", "price=2.5 names[0]=a"),
        ("{x==y} {x<=y} {x>=y}", "False True False"),
    ],
)
def test_a_field_is_what_the_same_f_string_gives(typed: str, sent: str) -> None:
    assert fill(typed, NAMESPACE) == sent
    assert fill(typed, NAMESPACE) == eval("f" + repr(typed), dict(NAMESPACE))


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("{nope}", "--vars: {nope}: name 'nope' is not defined in this notebook"),
        ("{x!z}", "--vars: {x!z}: a conversion is !r, !s or !a"),
        ("{names[9]}", "--vars: {names[9]} raised IndexError: list index out of range"),
        ("{fail()}", "--vars: {fail()} raised ValueError: first line"),  # one line only
        ("{x y}", "--vars: {x y} is not a Python expression"),
        ("{}", "--vars: {} names nothing"),
        ("{x", "--vars: '{x' has no closing }"),
        ("a } b", "--vars: a single } with no { before it"),
        ("{names:.2f}", "--vars: {names:.2f}: unsupported format string"),
        (  # code with a dict literal: the field's "format spec" is the dict's value
            'def f(): return {"a": 1}',
            '--vars: {"a": 1}: Space not allowed in string format specifier (write {{ and }}',
        ),
    ],
)
def test_what_cannot_be_filled_is_one_line_naming_the_field(typed: str, message: str) -> None:
    def fail() -> None:
        raise ValueError("first line\nsecond line")

    with pytest.raises(PromptVarsError) as info:
        fill(typed, {**NAMESPACE, "fail": fail})
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
