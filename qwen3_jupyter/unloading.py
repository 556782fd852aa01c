"""Freeing the kernel's model: `%qwen3 --unload` and `qwen3_jupyter.unload()`.

Why one place: both must run the unload to its end even when interrupted (stopped half way it
had already dropped the model but not yet given back its memory nor said so, and the next load
ran on top of the old weights), and a script needs the same proof a notebook user reads.
"""

from __future__ import annotations

from .api_call import api_call
from .interrupts import CELL_INTERRUPTS, interrupt_deferred
from .session import SESSION, UnloadReport


def unload_whole() -> UnloadReport:
    """`SESSION.unload()` run to its end even when interrupted, for `%qwen3 --unload`: the
    interrupt then ends the cell's later calls (`CELL_INTERRUPTS`) instead, and is said."""
    from . import display

    report, received = None, False
    try:
        with interrupt_deferred():
            report = SESSION.unload()
    except KeyboardInterrupt:
        if report is None:
            raise
        received = True
    if received:
        CELL_INTERRUPTS.note(True)
        display.info("the interrupt came while unloading: the unload was let finish")
    return report


def unload() -> UnloadReport:
    """Free the kernel's model, everything the fast path kept for it, and the connections to
    servers, as `%qwen3 --unload` does; the report measures it (`model_freed` comes from a
    weakref to the model object, `before`/`after` from the device's memory) and shows the
    magic's line. The next call loads the model again. Refused with `ModelBusy` while another
    thread's call uses the model; an interrupt lands once the unload has finished."""
    # The interrupt is delivered after the unload: the memory is back either way.
    with api_call(show_status=False), interrupt_deferred():
        return SESSION.unload()
