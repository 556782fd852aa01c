"""Holding a kernel interrupt (SIGINT) across a few lines that must run together.

An interrupt lands between any two Python bytecodes. Where a half-done step would lose or corrupt
something (a batch written to the JSON-lines file but not kept; a CUDA graph half captured), the
interrupt is held until the block has run and delivered right after.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Hold a kernel interrupt (SIGINT) until the block has run, then deliver it.

    Only on the main thread (signal handlers can be set nowhere else); elsewhere the block
    simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if not received or previous is signal.SIG_IGN:
        return
    if callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    else:
        raise KeyboardInterrupt
