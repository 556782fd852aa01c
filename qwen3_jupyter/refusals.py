"""A refused argument shows the caller's line and its one-line message, not the checks under it.

Why: `generate_batch(prompts, max_new_token=5)` printed 29 lines of this package's frames above
its message, a bad `device=` 77, where `%qwen3`'s typo is one line. A refusal is what the
package raises on purpose: its own errors (a model not found, a server down, a results file it
will not append to, the model busy, out of memory or over `memory_budget` once released) and a
ValueError, TypeError, NameError or RuntimeError that one of its `raise` statements raised.
Its traceback is cut at the public function the caller called, whose frame IPython and pytest
leave out (`__tracebackhide__`). Anything else — a bug here, an error in the caller's own
`on_text`, one from torch — keeps its whole traceback.
"""

from __future__ import annotations

import dis
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_PACKAGE = str(Path(__file__).resolve().parent)
_CHECKS_RAISE = (ValueError, TypeError, NameError, RuntimeError)


_ON_PURPOSE = "_qwen3_on_purpose"

E = TypeVar("E", bound=BaseException)


def on_purpose(interrupt: E) -> E:
    """`interrupt`, marked as one the package raises on purpose (a cell's later calls after an
    interrupt, a stopped block's): shown at the caller's line as a refusal is, not under
    three of the package's frames that each said "***failed resolving arguments***"."""
    setattr(interrupt, _ON_PURPOSE, True)
    return interrupt


def shown_at_the_callers_line(function: F) -> F:
    """`function`, with its refusals raised from its caller's line (see the module)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def public(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out of other errors
        try:
            _refuse_arguments_it_does_not_take(function.__name__, signature, args, kwargs)
            return function(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as exc:
            if not (is_refusal(exc) or getattr(exc, _ON_PURPOSE, False)):
                raise
            exc.__cause__, exc.__suppress_context__ = None, True  # the checks' own business
            setattr(exc, "_render_traceback_", _callers_lines)  # noqa: B010 (IPython's name)
            raise exc.with_traceback(None)  # noqa: B904 (the same exception, not a new one)

    return public  # type: ignore[return-value]


_SAID_AS = {"__call__": "chat"}
"""How a caller names a public method (`chat(...)` is `Chat.__call__`)."""
_NOT_OFFERED = frozenset({"caller"})
"""Keywords only the package's own callers pass (`cleanup(caller="magic")`), not named when a
call is told which keywords it may use (`shell=` is: `cleanup(get_ipython())` took it by
position before)."""


def _refuse_arguments_it_does_not_take(
    name: str, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """A one-line refusal for a call Python would refuse, in the caller's words: a misspelt
    keyword names the closest one (`cleanup(ful=True)`: did you mean full?) and a value given
    by position where names are needed says which (`cleanup(True)` reached the cleanup as its
    shell and failed four frames down)."""
    try:
        signature.bind(*args, **kwargs)
        return
    except TypeError as refused:
        why = str(refused)
    from .magic_args import refuse_unknown_keywords

    said = _SAID_AS.get(name, name)
    parameters = [p for p in signature.parameters.values() if p.name != "self"]
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        refuse_unknown_keywords(kwargs, named)
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    given = len(args) - (len(signature.parameters) - len(parameters))
    if given > len(positional):
        takes = (
            f"only {', '.join(positional)} by position" if positional else "no value by position"
        )
        keywords = ", ".join(
            f"{p.name}="
            for p in parameters
            if p.kind is p.KEYWORD_ONLY and p.name not in _NOT_OFFERED
        )
        ask = "name the others" if positional else "name each one"
        raise TypeError(f"{said}() takes {takes}: {ask} ({keywords})")
    raise TypeError(f"{said}(): {why}")


def _callers_lines() -> list[str]:
    """What IPython shows for a refusal (it asks an exception's `_render_traceback_`): its
    traceback without this package's frames — the caller's line, then the message. (IPython
    always shows the innermost frame, hidden or not, which here is the public function's.)
    The exception is IPython's `sys.last_value`, set just before it asks: one the function
    held would hold itself, alive until a collection, with its frames."""
    from IPython import get_ipython

    exc, shell = getattr(sys, "last_value", None), get_ipython()
    if getattr(exc, "_render_traceback_", None) is not _callers_lines or shell is None:
        raise LookupError("not this refusal: IPython shows the traceback as it is")
    assert isinstance(exc, BaseException)
    kept = []
    traceback = exc.__traceback__
    while traceback is not None:
        if not _ours(traceback.tb_frame.f_code.co_filename):
            kept.append(traceback)
        traceback = traceback.tb_next
    outside: TracebackType | None = None
    for step in reversed(kept):
        outside = TracebackType(outside, step.tb_frame, step.tb_lasti, step.tb_lineno)
    lines: list[str] = shell.InteractiveTB.structured_traceback(type(exc), exc, outside)
    return lines


def is_refusal(exc: BaseException) -> bool:
    """Whether `exc` is one this package raised on purpose (see the module)."""
    from .batching import ResultsFileError
    from .engines.base import EngineError
    from .generation import GenerationOOM
    from .model_use import ModelBusy
    from .models import ModelError

    if isinstance(exc, (ModelError, EngineError, ResultsFileError, ModelBusy, GenerationOOM)):
        return True
    return isinstance(exc, _CHECKS_RAISE) and _raised_by_a_raise_statement_here(exc)


def innermost_frame(exc: BaseException) -> TracebackType | None:
    """The traceback entry `exc` was raised at (None when it has no traceback)."""
    traceback = exc.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback


def raised_here(exc: BaseException) -> bool:
    """Whether `exc` was raised by this package's code (its innermost frame is ours)."""
    raised_at = innermost_frame(exc)
    return raised_at is not None and _ours(raised_at.tb_frame.f_code.co_filename)


def _raised_by_a_raise_statement_here(exc: BaseException) -> bool:
    """Whether `exc` was raised here, at a `raise X` (a bug's TypeError comes from an
    operation instead, an argument's check from a `raise`)."""
    raised_at = innermost_frame(exc)
    if raised_at is None or not _ours(raised_at.tb_frame.f_code.co_filename):
        return False
    for instruction in dis.get_instructions(raised_at.tb_frame.f_code):
        if instruction.offset == raised_at.tb_lasti:
            return instruction.opname == "RAISE_VARARGS" and (instruction.arg or 0) >= 1
    return False


def _ours(filename: str) -> bool:
    return str(Path(filename).resolve()).startswith(_PACKAGE)
