"""Syntax colours for the code blocks an answer shows as HTML (`markdown_text`), in
JupyterLab's own editor colours.

Why: a code block holding a `<` is written as HTML so that nothing the model wrote can become
a tag, and JupyterLab colours only the code blocks of its own Markdown: every block with a
comparison, a generic or a tag in it (most C++, HTML, JSX, Rust, and much Python) lost its
colours. Pygments (which IPython already needs) reads the code; each token's colour is one of
JupyterLab's `--jp-mirror-editor-*` variables, so light and dark themes both hold, and where
they are not defined (another front end) the code shows plain.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable

_COLOURS = (  # most specific first: Name.Builtin before Name
    ("Comment.PreprocFile", "string"),  # <vector> after #include
    ("Comment.Preproc", "meta"),  # #include, #!/usr/bin/env, as JupyterLab colours them
    ("Comment.Hashbang", "meta"),
    ("Comment.Special", "meta"),
    ("Comment", "comment"),
    ("Keyword.Constant", "atom"),
    ("Keyword", "keyword"),
    ("Literal.String", "string"),
    ("Literal.Number", "number"),
    ("Name.Builtin", "builtin"),
    ("Name.Function", "def"),
    ("Name.Class", "def"),
    ("Name.Decorator", "meta"),
    ("Name.Tag", "tag"),
    ("Name.Attribute", "attribute"),
    ("Name.Variable", "variable-2"),
    ("Operator.Word", "keyword"),
    ("Operator", "operator"),
    ("Generic.Heading", "header"),
    ("Generic.Subheading", "meta"),  # a diff's @@ line
    ("Generic.Error", "error"),
)
"""JupyterLab leaves punctuation plain but for brackets (`BRACKETS`)."""
BRACKETS = frozenset("()[]{}")
_FONTS = {"keyword": ";font-weight:bold", "comment": ";font-style:italic"}
"""As JupyterLab's editor draws them."""


LONGEST = 20_000
"""Longer code is shown plain: lexing took about 2 ms per KB, and the coloured HTML is
ten times the code, sent again at every streamed update."""


def highlighted(code: str, language: str, as_text: Callable[[str], str] = html.escape) -> str:
    """`code` as HTML text, each token `as_text` and coloured by its kind; plain `as_text`
    for a language Pygments does not know (or no language), or code over LONGEST characters.
    The last few are kept (an answer is shown again at every streamed update, its finished
    blocks unchanged)."""
    if not language or len(code) > LONGEST:
        return as_text(code)
    return _highlighted(code, language.lower(), as_text)


@functools.lru_cache(maxsize=16)
def _highlighted(code: str, language: str, as_text: Callable[[str], str]) -> str:
    tokens = _tokens(code, language)
    if tokens is None:
        return as_text(code)
    runs: list[tuple[str | None, str]] = []  # neighbours of one colour in one span
    for kind, value in tokens:
        colour = _colour(kind) if value.strip() else None
        if kind.startswith("Token.Punctuation"):
            colour = "bracket" if value.strip() and set(value.strip()) <= BRACKETS else None
        if runs and runs[-1][0] == colour:
            runs[-1] = (colour, runs[-1][1] + value)
        else:
            runs.append((colour, value))
    return "".join(
        f'<span style="color: var(--jp-mirror-editor-{colour}-color){_FONTS.get(colour, "")}">'
        f"{as_text(text)}</span>"
        if colour
        else as_text(text)
        for colour, text in runs
    )


def _tokens(code: str, language: str) -> list[tuple[str, str]] | None:
    """Pygments' tokens of `code`, which put together are `code` exactly (else None)."""
    try:
        from pygments.lexers import get_lexer_by_name
        from pygments.util import ClassNotFound
    except ImportError:
        return None
    try:
        lexer = get_lexer_by_name(language, stripnl=False, ensurenl=False, stripall=False)
    except ClassNotFound:
        return None
    try:
        tokens = [(str(kind), value) for kind, value in lexer.get_tokens(code)]
    except Exception:  # a lexer that fails on odd input: the code stays plain
        return None
    return tokens if "".join(value for _, value in tokens) == code else None


@functools.lru_cache(maxsize=256)
def _colour(kind: str) -> str | None:
    """The JupyterLab colour for a Pygments token kind (`Token.Keyword.Constant`), if any."""
    name = kind.removeprefix("Token.")
    for prefix, colour in _COLOURS:
        if name == prefix or name.startswith(prefix + "."):
            return colour
    return None
