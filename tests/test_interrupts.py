"""Interrupts that Python would drop: raised inside a finalizer, a KeyboardInterrupt is printed
as "Exception ignored" and lost. `interrupts_that_land` (around torch.compile's first run) sends
it again until it ends the block."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from qwen3_jupyter.interrupts import interrupts_that_land


class _DropsTheInterrupt:
    """An object whose finalizer is where the interrupt lands, as one of torch.compile's may."""

    fired = False

    def __del__(self) -> None:
        if not _DropsTheInterrupt.fired:
            _DropsTheInterrupt.fired = True
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.01)  # bytecodes after the signal: its KeyboardInterrupt is raised here


@pytest.fixture(autouse=True)
def pythons_own_handler() -> Iterator[None]:
    """Each test starts from Python's own SIGINT handler, whatever this process had: SIG_IGN in
    a job started from a shell, or what nbclient (test_demo) put back, which is not always what
    it found."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


before = signal.default_int_handler


def _busy_block(steps: list[int]) -> None:
    for step in range(300):  # 3 s if nothing stops it
        steps.append(step)
        if step == 5:
            _DropsTheInterrupt()  # made and freed at once: its __del__ runs here
        time.sleep(0.01)


DROPPED = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
"""The dropped KeyboardInterrupt reaches sys.unraisablehook, which pytest turns into a warning."""


@DROPPED
def test_python_drops_an_interrupt_raised_in_a_finalizer() -> None:
    """The problem, shown with Python's own handler: the block runs to its end."""
    _DropsTheInterrupt.fired = False
    steps: list[int] = []
    _busy_block(steps)
    assert _DropsTheInterrupt.fired and len(steps) == 300


@DROPPED
def test_an_interrupt_dropped_in_a_finalizer_still_ends_the_block() -> None:
    _DropsTheInterrupt.fired = False
    steps: list[int] = []
    with pytest.raises(KeyboardInterrupt), interrupts_that_land():
        _busy_block(steps)
    assert _DropsTheInterrupt.fired
    assert len(steps) < 100, f"the block ran {len(steps)} steps after the interrupt"
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_a_block_that_ends_without_an_interrupt_leaves_nothing_behind() -> None:
    with interrupts_that_land():
        time.sleep(0.05)
    time.sleep(0.6)  # no resend comes later
    assert signal.getsignal(signal.SIGINT) is before


def test_an_interrupt_turned_into_another_error_still_ends_as_an_interrupt() -> None:
    """The interrupt landed, but the code it stopped raised something else on the way out (as a
    compiler may wrap it): the block still ends with KeyboardInterrupt, not a 'failed compile'."""
    with pytest.raises(KeyboardInterrupt) as ended, interrupts_that_land():
        try:
            signal.raise_signal(signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise RuntimeError("compile failed") from None
    assert isinstance(ended.value.__cause__, RuntimeError)


def test_an_interrupt_while_the_block_is_left_is_ignored_and_the_handler_put_back() -> None:
    """An interrupt that lands in the block's own exit must not skip putting the handler back
    (every later interrupt of the cell would be ignored)."""

    class InterruptedAsItIsSet(threading.Event):
        def set(self) -> None:
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.01)  # the KeyboardInterrupt would be raised in here
            super().set()

    landing = interrupts_that_land()
    landing._done = InterruptedAsItIsSet()  # type: ignore[attr-defined]
    with landing:
        pass
    assert signal.getsignal(signal.SIGINT) is before
