"""`%qwen3_gauge`: show the live memory gauge; wires the monitor's decay signals on load.

Loading registers the magic and feeds every finished `%qwen3` call to the monitor (latency
decay) and every cleanup report (retained-memory drift, peak reset) when the cleanup module
offers listeners. It also plugs the session's engines into the monitor as sources: what they
keep in memory on purpose, and the load of the servers `%qwen3 --server` talks to (so the
monitor never imports the session). Unloading closes every gauge, stops the polling thread and
shuts NVML down.
"""

from __future__ import annotations

import importlib
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from . import lifecycle, monitor
from .display import in_a_cell, info
from .magic_args import asks_help, parse_options, plain_usage, show_help


@magics_class
class GaugeMagics(Magics):
    """The memory gauge magic."""

    @plain_usage
    @magic_arguments()
    @argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help=(
            "Seconds between polls for every gauge in this kernel (0.5 until set; later gauges "
            "keep it; minimum 0.05)."
        ),
    )
    @argument("--all", action="store_true", help="Also show GPUs this kernel cannot use.")
    @argument(
        "--compact",
        action="store_true",
        help="One line per row, no sparkline; no footer unless it says why a GPU is missing.",
    )
    @argument(
        "--stop",
        action="store_true",
        help="Close every gauge and stop the polling thread (a new gauge starts it again).",
    )
    @line_magic
    def qwen3_gauge(self, line: str = "") -> None:
        """Show a live memory gauge that updates while cells run.

        One row per GPU this kernel can use (NVML, matched to torch by UUID, so
        CUDA_VISIBLE_DEVICES is honoured), then host memory: a bar coloured by how full it is,
        used / total, this kernel's share (or "unknown" with torch's reserved figure when NVML
        cannot see this process, as in containers), torch allocated / reserved, the peak since
        the last cleanup and a sparkline of the last two minutes. Warnings appear when free
        memory runs low, when `%qwen3` calls slow down against the first calls, and when memory
        left after cleanup keeps growing; `%qwen3_clean --verbose` shows what holds memory.
        Without an NVIDIA driver the gauge says so and shows host memory.

        Examples:

          %qwen3_gauge
          %qwen3_gauge --interval 0.2 --all
          %qwen3_gauge --stop

        From Python: `qwen3_jupyter.gauge(interval=None, show_all=False, compact=False)`.
        """
        if asks_help(line):
            show_help(self.shell, "qwen3_gauge", self.qwen3_gauge)
            return
        args = parse_options(self.qwen3_gauge, line, "%qwen3_gauge?")
        others = [v for k, v in vars(args).items() if k != "stop"]
        if args.stop and any(v is not None and v is not False for v in others):
            # as `%qwen3 --stop`: an option beside it (--interval 0.2) was silently dropped
            raise UsageError(
                "--stop goes alone: it closes every gauge and stops the polling thread"
            )
        problem = None if args.interval is None else monitor.interval_problem(args.interval)
        if problem is not None:
            raise UsageError(f"--interval {problem}")
        from .gauge import close_all, gauge

        if args.stop:
            closed = close_all()
            running = monitor.current_monitor()
            if running is not None:
                running.stop()
            info(f"gauge stopped ({closed} closed); %qwen3_gauge starts it again")
            return
        if not in_a_cell():  # a kernel's exec_lines: nothing would show it, yet it polled
            raise UsageError(
                "%qwen3_gauge shows in a cell, and none runs while the kernel starts: run it in "
                "a notebook cell (JupyterLab's sidebar gauge needs none)"
            )
        display(gauge(interval=args.interval, show_all=args.all, compact=args.compact))


def _listen_to_results() -> Callable[[], None]:
    from .session import SESSION

    loads = LoadCounter()
    return SESSION.add_result_listener(
        lambda result: monitor.get_monitor().note_result(result, loads.current(SESSION.loaded))
    )


class LoadCounter:
    """Numbers the loads of the model: an unloaded and reloaded model gets a new number, so
    the latency signal never compares calls across a reload. Holds a weak reference only
    (a strong one would keep an unloaded model alive; an id could be reused by the next load)."""

    def __init__(self) -> None:
        self._ref: weakref.ref[Any] | None = None
        self.number = 0

    def current(self, loaded: object | None) -> int:
        known = self._ref() if self._ref is not None else None
        if loaded is None or loaded is not known:
            self.number += loaded is not None or self._ref is not None
            self._ref = _weak(loaded)
        return self.number


def _weak(value: object | None) -> weakref.ref[Any] | None:
    try:
        return None if value is None else weakref.ref(value)
    except TypeError:  # cannot tell loads apart: every call starts a new baseline
        return None


def kept_lines(session: Any) -> tuple[str, ...]:
    """What the session's engines keep on purpose, one line each, with how to give it back."""
    return tuple(f"{k.describe()} ({k.give_back})" for k in session.kept_memory())


def server_loads(session: Any) -> tuple[Any, ...]:
    """The load of every server the session keeps a connection to (engines with
    `server_load()`; read on the monitor's thread, each cached for a few seconds)."""
    loads = []
    for engine in list(session.engines.values()):
        read = getattr(engine, "server_load", None)
        if callable(read):
            loads.append(read())
    return tuple(loads)


def _watch_engines() -> Callable[[], None]:
    from .session import SESSION

    watched = monitor.get_monitor()
    undo_kept = watched.watch_kept(lambda: kept_lines(SESSION))
    undo_servers = watched.watch_servers(lambda: server_loads(SESSION))

    def undo() -> None:
        undo_kept()
        undo_servers()

    return undo


def _listen_to_cleanups() -> Callable[[], None] | None:
    """Subscribe to cleanup reports if the cleanup module offers `add_cleanup_listener`."""
    try:
        cleanup = importlib.import_module(f"{__package__}.cleanup")
    except ImportError:
        return None
    add = getattr(cleanup, "add_cleanup_listener", None)
    if add is None:
        return None

    seen = _NotebookState()

    def on_report(report: Any) -> None:
        if any(getattr(a, "skipped", None) for a in getattr(report, "actions", ())):
            return  # another thread was generating: its live tensors are in the figures
        explained = seen.grew()
        monitor.get_monitor().note_cleanup(retained_bytes(report), explained=explained)

    remove = add(on_report)
    return remove if callable(remove) else None


class _NotebookState:
    """The notebook's variable names and the imported modules at the last cleanup.

    Why: memory left after cleanup also rises when the user keeps new data (`b = big()`) or
    imports a library; neither is a leak, and the drift warning said "something keeps
    references" for both (measured: four imports, four cells each keeping a new tensor)."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._modules = 0

    def grew(self) -> bool:
        """Whether new variables or modules appeared since the last call (remembering now)."""
        names = _user_names()
        modules = len(sys.modules)
        grew = bool(names - self._names) or modules > self._modules
        self._names, self._modules = names, modules
        return grew


def _user_names() -> set[str]:
    from IPython import get_ipython

    from .user_namespace import user_variables

    shell = get_ipython()
    return set(user_variables(shell)) if shell is not None else set()


def retained_bytes(report: Any) -> int:
    """What a cleanup left behind, measured the same way every time so drift means something.

    Per device of the report: on a GPU, torch's allocated bytes (live tensors, always measured)
    or else its reserved bytes; on the CPU, the process RSS (tensor bytes are counted there only
    in verbose cleanups, so they would make calls incomparable).
    """
    total = 0
    for change in getattr(report, "devices", ()):
        after = change.after
        if change.device == "cpu":
            figure = after.process
        else:
            figure = after.tensors if after.tensors is not None else after.reserved
        total += int(figure or 0)
    return total


_STOP_FEEDING: Callable[[], None] | None = None
"""Undoes `feed_monitor`; None while the monitor is not fed."""
_FEEDING_LOCK = threading.Lock()


def feed_monitor() -> None:
    """Feed the monitor what its gauges say besides memory, once: calls' results (latency
    drift), cleanups (the peak since the last cleanup, retained-memory drift), the kept and
    server rows. The magic's load does it, and so does `qwen3_jupyter.gauge()` without the
    extension loaded: its peak otherwise never reset."""
    global _STOP_FEEDING
    with _FEEDING_LOCK:
        if _STOP_FEEDING is not None:
            return
        undo_results = _listen_to_results()
        undo_cleanups = _listen_to_cleanups()
        undo_engines = _watch_engines()

        def stop() -> None:
            undo_results()
            undo_engines()
            if undo_cleanups is not None:
                undo_cleanups()

        _STOP_FEEDING = stop


def load(ip: Any) -> None:
    """Register `%qwen3_gauge` and feed the monitor; the undo goes to lifecycle."""
    ip.register_magics(GaugeMagics(shell=ip))
    feed_monitor()

    def undo() -> None:
        global _STOP_FEEDING
        # One step: a `gauge()` from another thread in between would feed the monitor that
        # `unload` discards, and mark the next one fed.
        with _FEEDING_LOCK:
            stop, _STOP_FEEDING = _STOP_FEEDING, None
            if stop is not None:
                stop()
            unload(ip)

    lifecycle.on_unload("qwen3-gauge", undo)


def unload(ip: Any) -> None:
    """Close every gauge, stop the monitor thread and NVML, remove the magic."""
    if f"{__package__}.gauge" in sys.modules:
        from .gauge import close_all

        closed = close_all()
        if closed:
            lifecycle.tell(f"{closed} gauge{'s' if closed > 1 else ''} closed (%qwen3_gauge)")
    monitor.shutdown()
    lifecycle.remove_magics(ip, "GaugeMagics", line=("qwen3_gauge",))
