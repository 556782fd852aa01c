"""transformers' own progress bars off, and the weight loading said on our line instead.

Why: in a kernel each tqdm bar transformers opens is ipywidgets models that outlive the call
("Writing model shards" on an embedded model's first build, "Loading weights" on every load),
while the call's status line already says what is happening. Loading a large checkpoint still
takes long enough that "loading Qwen/Qwen3-14B on cuda (bfloat16)…" alone reads like a hang,
so the loading bar's count goes to that line as a percentage instead. Outside a kernel the
bars are off too: a Python API call says the same on stderr (`display.ConsoleLine`), one line
for the build and the load rather than transformers' bars beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any

Progress = Callable[[str, int, int], None]
"""`progress(what, done, total)`, as the status line's `progress` takes it; a `total` of 0 is
work with no measure (a wait), shown without a percentage."""


def progress_text(what: str, done: int, total: int) -> str:
    """The line a status shows for `progress(what, done, total)`: "building tiny: 40%", or
    "waiting for another process's build of tiny…" where there is nothing to count (a wait
    read ": 0%" throughout)."""
    return f"{what}: {int(100 * done / total)}%" if total > 0 else f"{what}…"


LOADING_BAR = "Loading weights"
"""The description of the bar transformers opens over a checkpoint's tensors."""


@contextmanager
def hub_progress_bars_off() -> Iterator[None]:
    """transformers' tqdm bars off while a checkpoint is written or loaded; the user's own
    setting comes back after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def loading_progress(progress: Progress | None, what: str) -> Iterator[None]:
    """While the block runs, transformers' "Loading weights" bar reports `what` to `progress`
    (tensors done of the checkpoint's). Nothing where transformers has no hook for its bars
    (releases before `set_tqdm_hook`) or nobody listens."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if progress is None or set_hook is None:
        yield
        return

    def hook(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bar = factory(*args, **kwargs)
        if kwargs.get("desc") != LOADING_BAR or not args:
            return bar  # any other bar (another thread's, say) is left as it was
        return _Reported(bar, args[0], progress, what)

    previous = set_hook(hook)
    try:
        yield
    finally:
        set_hook(previous)


class _Reported:
    """A tqdm stand-in over `items` that reports each item done to `progress`."""

    def __init__(self, bar: Any, items: Iterable[Any], progress: Progress, what: str) -> None:
        self._bar = bar
        self._items = items
        self._progress = progress
        self._what = what
        self._total = len(items) if isinstance(items, Sized) else 0

    def __iter__(self) -> Iterator[Any]:
        for done, item in enumerate(self._items, start=1):
            yield item  # the loader works on it before asking for the next one
            if self._total:
                self._progress(self._what, done, self._total)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)

    def __enter__(self) -> _Reported:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        close = getattr(self._bar, "close", None)
        if callable(close):
            close()


LOAD_REPORT_LOGGER = "transformers.modeling_utils"
"""The logger transformers' load report (weights missing from, or unexpected in, a checkpoint)
is written to, as a warning."""


@contextmanager
def load_report_held() -> Iterator[list[logging.LogRecord]]:
    """transformers' load report, held back in the yielded list rather than written: the caller
    writes it (`let_out`) when it keeps the model, and drops it when it refuses one in a line
    of its own (a 40-line table of every weight on stderr came above that line)."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def let_out(held: list[logging.LogRecord]) -> None:
    """Write the reports `load_report_held` kept, as transformers would have."""
    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    for record in held:
        logger.handle(record)
