"""incremental_gc.py: cleanups scan only new objects, yet no cycle is lost and gc stays honest.

Every test runs in a real kernel with the tiny model loaded. A cycle is a `Node` that refers to
itself and holds a tensor; a weakref to the tensor tells whether the cycle was freed. Each
claim has its control: the object is alive before the step that should free it, and where
the claim is "the freeze is in effect", the original (unwrapped) gc function is shown to miss
what the wrapped one finds.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

import pytest

from qwen3_jupyter.incremental_gc import IncrementalCollector
from qwen3_jupyter.memory import MiB
from tests.kernel import NOTHING_FROZEN_BUT_PYTHONS_OWN, WEAKREF_HELPERS, Kernel, alive, ok

SETUP = (
    WEAKREF_HELPERS
    + """
import os
import qwen3_jupyter
from qwen3_jupyter.incremental_gc import COLLECTOR, _ORIGINAL
class Node:
    pass
def cycle(name):
    '''A self-referencing object holding a 1 MiB tensor, recorded as refs[name].'''
    node = Node()
    node.me = node
    node.t = torch.ones(MiB // 4)
    refs[name] = weakref.ref(node.t)
    return node
"""
)


@pytest.fixture(scope="module")
def k(kernel: Kernel) -> Iterator[Kernel]:
    ok(kernel, SETUP)
    ok(kernel, "%qwen3 --model tiny --greedy --max-new-tokens 2 hi")
    yield kernel


@pytest.fixture()
def frozen(k: Kernel) -> Kernel:
    """The kernel right after a full cleanup: everything alive is frozen."""
    ok(k, "gc.enable()")
    assert k.value("qwen3_jupyter.cleanup(full=True).gc_pass") == "full gc (asked for)"
    assert k.value("COLLECTOR.frozen") is True
    return k


def test_first_cleanup_is_full_then_only_new_objects_are_scanned(fresh_kernel: Kernel) -> None:
    ok(fresh_kernel, "%load_ext qwen3_jupyter")
    ok(fresh_kernel, SETUP)
    first = fresh_kernel.value("qwen3_jupyter.cleanup().gc_pass")
    assert first == "full gc (first cleanup)"
    ok(fresh_kernel, "r = qwen3_jupyter.cleanup()")
    assert fresh_kernel.value("r.gc_pass").startswith("gc of ")
    scanned = fresh_kernel.value("COLLECTOR.last.scanned")
    tracked = fresh_kernel.value("len(gc.get_objects())")  # hands the frozen ones back
    assert tracked > 50_000, "control: the kernel holds many objects"
    assert scanned < tracked / 20, (scanned, tracked)
    assert "gc of" in fresh_kernel.value("r.summary()")


def test_a_cycle_created_after_the_last_cleanup_is_freed(frozen: Kernel) -> None:
    k = frozen
    ok(k, "gc.disable()\nnode = cycle('new')\ndel node")
    try:
        assert alive(k, "new"), "control: nothing freed the cycle before the cleanup"
        ok(k, "r = qwen3_jupyter.cleanup()")
        assert k.value("r.gc_pass").startswith("gc of "), "not an incremental pass"
        assert not alive(k, "new")
    finally:
        ok(k, "gc.enable()")


def test_a_deleted_variable_whose_cycle_was_frozen_gets_a_full_pass(frozen: Kernel) -> None:
    k = frozen
    ok(k, "gc.disable()\nnode = cycle('named')\nqwen3_jupyter.cleanup()")
    try:
        assert alive(k, "named")
        ok(k, "del node\nr = qwen3_jupyter.cleanup()")
        assert k.value("r.gc_pass") == (
            "full gc (`node` was deleted; its old value may be a stranded cycle)"
        )
        assert not alive(k, "named")
    finally:
        ok(k, "gc.enable()")


def test_a_frozen_cycle_stranded_inside_a_container_waits_for_full(frozen: Kernel) -> None:
    """The documented limit, and the control that shows old objects really are skipped."""
    k = frozen
    ok(k, "gc.disable()\nbox = [cycle('boxed')]\nqwen3_jupyter.cleanup()")
    try:
        ok(k, "box.clear()\nr = qwen3_jupyter.cleanup()")
        assert k.value("r.gc_pass").startswith("gc of ")
        assert alive(k, "boxed"), "an incremental pass scanned a frozen object"
        ok(k, "%qwen3_clean --full")
        assert not alive(k, "boxed")
    finally:
        ok(k, "gc.enable()\ndel box")


def test_a_big_frozen_cycle_stranded_inside_a_container_gets_a_full_pass(frozen: Kernel) -> None:
    """Its tensor is not in pymalloc's block count, so only the memory rule notices it: the
    cleanup that froze it saw the process grow by MEMORY_GROWTH, so the next one scans all."""
    k = frozen
    size = k.value("qwen3_jupyter.incremental_gc.MEMORY_GROWTH") + 32 * MiB
    ok(k, f"gc.disable()\nbig = cycle('bigboxed')\nbig.t = torch.ones({size} // 4)")
    ok(k, "refs['bigboxed'] = weakref.ref(big.t)\nbox = [big]\ndel big")
    try:
        assert k.value("qwen3_jupyter.cleanup().gc_pass").startswith("gc of "), "control"
        ok(k, "box.clear()")
        assert alive(k, "bigboxed"), "control: nothing freed the cycle before the cleanup"
        ok(k, "r = qwen3_jupyter.cleanup()")
        assert "more memory was frozen since the last full gc" in k.value("r.gc_pass")
        assert not alive(k, "bigboxed")
        assert k.value("r.freed_bytes") >= size - 8 * MiB, k.value("r.summary()")
        ok(k, "r = qwen3_jupyter.cleanup()")
        assert k.value("r.gc_pass").startswith("gc of "), "the baseline did not move back"
    finally:
        ok(k, "gc.enable()\ndel box")


def test_full_pass_after_full_every_incremental_ones(frozen: Kernel) -> None:
    k = frozen
    every = k.value("qwen3_jupyter.incremental_gc.FULL_EVERY")
    passes = k.value(f"[qwen3_jupyter.cleanup().gc_pass for _ in range({every + 1})]")
    assert all(p.startswith("gc of ") for p in passes[:-1]), passes
    assert passes[-1] == f"full gc ({every} incremental passes since the last full gc)"


def test_rebinding_keeps_the_pass_incremental_only_when_the_old_value_died(
    frozen: Kernel,
) -> None:
    k = frozen
    ok(k, "x = torch.ones(8)\nresults = [1]\nqwen3_jupyter.cleanup()")
    ok(k, "x = torch.ones(8)  # the old tensor dies by reference counting")
    assert k.value("qwen3_jupyter.cleanup().gc_pass").startswith("gc of ")
    ok(k, "gc.disable()\nresults = [cycle('listed')]\nqwen3_jupyter.cleanup()")
    try:
        ok(k, "results = [2]  # a list: no weakref, and it held a cycle")
        assert alive(k, "listed"), "control: nothing freed the cycle before the cleanup"
        assert k.value("qwen3_jupyter.cleanup().gc_pass") == (
            "full gc (`results` was rebound; its old value may be a stranded cycle)"
        )
        assert not alive(k, "listed")
    finally:
        ok(k, "gc.enable()\ndel x, results")


def test_rebinding_a_list_that_holds_no_cycle_keeps_the_pass_incremental(frozen: Kernel) -> None:
    """Re-running a cell that builds a list (or a dict) of tensors made every cleanup after
    it a full gc (0.2-0.45 s with autoclean): a list takes no weak reference, so its fate
    was unknown, though one that reaches no cycle is freed by reference counting."""
    k = frozen
    cell = (
        "refs['old row'] = refs.get('row')\n"
        "rows = [torch.ones(300, 300) for _ in range(10)]\n"
        "config = {'lr': [1e-3], 'rows': rows, 'shape': (1, [2])}\n"
        "refs['row'] = weakref.ref(rows[0])"
    )
    ok(k, cell + "\nqwen3_jupyter.cleanup()")
    for _ in range(2):
        ok(k, cell)
        assert not alive(k, "old row"), "control: the old list's tensors went with it"
        passes = k.value("qwen3_jupyter.cleanup().gc_pass")
        assert passes.startswith("gc of "), passes
    # contents changed at the same length (an item replaced, a nested list appended to): the
    # verdict of the cleanup before was kept, and deleting them stranded the cycles
    ok(k, "gc.disable()\nslots = [None]\nnested = {'k': []}\nqwen3_jupyter.cleanup()")
    try:
        ok(k, "slots[0] = cycle('slot')\nnested['k'].append(cycle('nested'))")
        ok(k, "qwen3_jupyter.cleanup()")
        ok(k, "del slots, nested")
        passes = k.value("qwen3_jupyter.cleanup().gc_pass")
        assert passes.startswith("full gc (`"), passes
        assert not alive(k, "slot") and not alive(k, "nested")
        # a class made at run time, held by a list alone, is searched too
        ok(k, "made = [type('Cfg', (), {})]\nmade[0].me = made\nqwen3_jupyter.cleanup()")
        ok(k, "made = [1]")
        assert k.value("qwen3_jupyter.cleanup().gc_pass").startswith("full gc (`made`")
    finally:
        ok(k, "gc.enable()")
    ok(k, "config['me'] = config  # a cycle now: the next cleanup's search sees it")
    ok(k, "qwen3_jupyter.cleanup()")
    ok(k, "config = {}")
    assert k.value("qwen3_jupyter.cleanup().gc_pass") == (
        "full gc (`config` was rebound; its old value may be a stranded cycle)"
    )
    ok(k, "del rows, config")


def test_gc_functions_still_see_and_collect_frozen_objects(frozen: Kernel) -> None:
    k = frozen
    ok(k, "gc.disable()\nkeeper = [cycle('old')]\nmarker = keeper[0].t\nqwen3_jupyter.cleanup()")
    try:
        assert k.value("any(o is marker for o in _ORIGINAL['get_objects']())") is False, (
            "control: the tensor is not frozen"
        )
        assert k.value("any(o is marker for o in gc.get_objects())") is True
        assert k.value("COLLECTOR.frozen") is False, "get_objects did not hand them back"
        ok(k, "qwen3_jupyter.cleanup()")
        assert k.value("any(r is keeper for r in gc.get_referrers(keeper[0]))") is True
        ok(k, "qwen3_jupyter.cleanup()")
        ok(k, "del marker\nkeeper.clear()\n_ORIGINAL['collect']()")
        assert alive(k, "old"), "control: the original gc.collect() skips frozen objects"
        ok(k, "gc.collect()  # the user's own recipe")
        assert not alive(k, "old")
        assert k.value("qwen3_jupyter.cleanup().gc_pass") == "full gc (gc.collect() was called)"
    finally:
        ok(k, "gc.enable()\ndel keeper")


def test_python_own_full_collection_gets_the_frozen_objects_back(frozen: Kernel) -> None:
    k = frozen
    ok(k, "box = [cycle('auto')]\nqwen3_jupyter.cleanup()\nbox.clear()")
    assert alive(k, "auto")
    # Grow the heap by half with automatic gc on: Python's own full collection comes due.
    ok(k, "grow = [[i] for i in range(sys.getallocatedblocks() // 4)]")
    try:
        assert not alive(k, "auto")
        assert k.value("qwen3_jupyter.cleanup().gc_pass") == (
            "full gc (Python's own full collection was due)"
        )
    finally:
        ok(k, "del grow, box")


def test_full_flag_dynamo_and_verbose_scan_everything(frozen: Kernel) -> None:
    k = frozen
    out = ok(k, "%qwen3_clean --full").stdout
    assert ", full gc (asked for)\n" in out
    assert k.value("qwen3_jupyter.cleanup(dynamo=True).gc_pass") == (
        "full gc (torch.compile state was reset)"
    )
    assert k.value("qwen3_jupyter.cleanup(verbose=True).gc_pass") == (
        "full gc (needed to count tensors)"
    )
    assert k.value("qwen3_jupyter.cleanup().gc_pass") == (
        "full gc (the last cleanup counted every tensor)"
    )


def test_switched_off_by_the_environment(frozen: Kernel) -> None:
    k = frozen
    ok(k, "os.environ['QWEN3_JUPYTER_INCREMENTAL_GC'] = '0'")
    try:
        for _ in range(2):
            passes = k.value("qwen3_jupyter.cleanup().gc_pass")
            assert passes == "full gc (QWEN3_JUPYTER_INCREMENTAL_GC=0)"
        assert k.value(NOTHING_FROZEN_BUT_PYTHONS_OWN)
    finally:
        ok(k, "del os.environ['QWEN3_JUPYTER_INCREMENTAL_GC']")


def test_unloading_the_model_after_cleanups_frees_it(frozen: Kernel) -> None:
    k = frozen
    ok(
        k,
        "from qwen3_jupyter.session import SESSION\n"
        "refs['model'] = weakref.ref(SESSION.loaded.model)",
    )
    ok(k, "qwen3_jupyter.cleanup()")
    out = ok(k, "%qwen3 --unload").stdout
    assert not alive(k, "model"), out
    ok(k, "%qwen3 --model tiny --greedy --max-new-tokens 2 hi")


def test_unloading_the_extension_unfreezes_and_restores_gc(fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    ok(k, "%load_ext qwen3_jupyter")
    ok(k, "import gc, qwen3_jupyter\nqwen3_jupyter.cleanup()")
    names = "('collect', 'get_objects', 'get_referrers')"
    wrapped = f"[hasattr(getattr(gc, n), '__wrapped__') for n in {names}]"
    ours = (
        "sum(getattr(c, '__qualname__', '') == 'IncrementalCollector._on_gc' for c in gc.callbacks)"
    )
    assert k.value("gc.get_freeze_count() > 0"), "control: nothing was frozen"
    assert k.value(wrapped) == [True] * 3
    hook = "getattr(sys.unraisablehook, '__qualname__', '')"
    ok(k, "import sys")
    assert k.value(ours) == 1
    assert k.value(hook) == "IncrementalCollector._on_unraisable"
    ok(k, "%unload_ext qwen3_jupyter")
    assert k.value(NOTHING_FROZEN_BUT_PYTHONS_OWN)
    assert k.value(wrapped) == [False] * 3
    assert k.value(ours) == 0
    assert k.value("sys.unraisablehook is sys.__unraisablehook__") is True


def test_objects_the_user_froze_stay_frozen(fresh_kernel: Kernel) -> None:
    """gc.unfreeze() cannot tell whose objects it thaws: a user's own gc.freeze() (a server
    before forking workers, say) was undone by the first cleanup's hand-back, by a plain
    gc.collect() after a cleanup, and by unloading. Their objects stay frozen now, and every
    cleanup is a full one, saying why."""
    k = fresh_kernel
    ok(k, "import gc\nkept = [[n] for n in range(20000)]\ngc.freeze()")
    frozen = k.value("gc.get_freeze_count()")
    ok(k, "%load_ext qwen3_jupyter\nimport qwen3_jupyter")
    for _ in range(2):
        ok(k, "r = qwen3_jupyter.cleanup()")
        assert k.value("r.gc_pass").startswith("full gc (objects were frozen outside this ext")
        assert k.value("gc.get_freeze_count()") > frozen - 100  # (a few die by refcount)
    ok(k, "gc.collect()\n%unload_ext qwen3_jupyter")
    assert k.value("gc.get_freeze_count()") > frozen - 100, "was 0"


def test_an_interrupt_in_the_gc_callback_is_sent_again_not_dropped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Raised inside a gc callback, a KeyboardInterrupt is printed as "Exception ignored" and
    lost (sent again from inside the callback, it is raised there again); the callback has it
    sent again after the collection, where it lands. A real collection runs the callback."""
    collector = IncrementalCollector()
    collector.frozen = True
    monkeypatch.setattr(collector, "_heap_grew", lambda: True)

    def interrupted(why: str) -> None:
        raise KeyboardInterrupt  # as a SIGINT landing in the callback would

    monkeypatch.setattr(collector, "hand_back", interrupted)
    with _interrupt_expected(collector):
        gc.collect()
    assert "Exception ignored" not in capsys.readouterr().err


@contextlib.contextmanager
def _interrupt_expected(collector: IncrementalCollector) -> Iterator[None]:
    """Runs the block with `collector`'s gc callback installed and Python's own SIGINT
    handler; the interrupt must reach this thread, in the block or within 5 s after it."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    gc.callbacks.append(collector._on_gc)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        gc.callbacks.remove(collector._on_gc)
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_arriving_during_a_collection_is_sent_again_not_dropped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGINT (from another process, as Jupyter sends it) that arrives while gc collects
    raises at the first instruction of the callback, before any `try` in it: before, Python
    printed "Exception ignored in ... _on_gc" and the interrupt was lost. Each collection here
    takes a good part of a second, so the signal lands in one of them."""
    import os
    import subprocess
    import sys

    collector = IncrementalCollector()
    monkeypatch.setattr(collector, "_previous_unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(sys, "unraisablehook", collector._on_unraisable)
    cycles = []
    for _ in range(1_500_000):
        cycle: list[object] = []
        cycle.append(cycle)
        cycles.append(cycle)
    try:
        with _interrupt_expected(collector):
            sender = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -INT {os.getpid()}"])
            for _ in range(12):
                gc.collect()
            sender.wait()  # on a loaded machine it came after the test and killed the worker
    finally:
        del cycles
    assert "Exception ignored" not in capsys.readouterr().err


class _InterruptedAfterItsFirstStatement(IncrementalCollector):
    """Has a KeyboardInterrupt raised in the "stop" call of `_on_gc` after its first statement,
    where Python 3.10 raises a signal that arrived during the collection (3.11+ raise it at the
    callback's first instruction)."""

    _caught = False
    _raised = False

    @property  # type: ignore[override]
    def _interrupt_caught(self) -> bool:  # read in the "stop" call only
        if not self._raised:
            self._raised = True
            raise KeyboardInterrupt
        return self._caught

    @_interrupt_caught.setter
    def _interrupt_caught(self, value: bool) -> None:
        self._caught = value


def test_an_interrupt_raised_past_the_callbacks_first_statement_is_sent_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Which call of the gc callback (start or stop) an interrupt landed in was told from a
    flag its first statement set: on 3.10 the statement had run, so an interrupt landing in
    the "stop" call was taken for a "start" one and kept for a stop that never came — lost
    (the real-signal test above failed one run in two there)."""
    import sys

    collector = _InterruptedAfterItsFirstStatement()
    monkeypatch.setattr(collector, "_previous_unraisablehook", sys.unraisablehook)
    monkeypatch.setattr(sys, "unraisablehook", collector._on_unraisable)
    with _interrupt_expected(collector):
        gc.collect()
    assert collector._raised, "the callback's stop call never read the flag: a test of nothing"
    assert "Exception ignored" not in capsys.readouterr().err


def test_a_chat_turn_under_autoclean_is_not_a_full_gc_for_the_rebound_result(
    frozen: Kernel,
) -> None:
    """`_qwen3` is rebound by every call; with the previous result still referenced (a list,
    `Out`), every turn under `%qwen3_autoclean on` was a full gc ("`_qwen3` was rebound"),
    though a result of plain values cannot be a stranded cycle."""
    k = frozen
    ok(k, "%qwen3 --model tiny --greedy --no-think --max-new-tokens 2 hi\nkept = [_qwen3]")
    assert "autoclean on" in ok(k, "%qwen3_autoclean on").stdout
    try:
        for turn in range(3):
            ok(k, f"%qwen3 --chat --greedy --no-think --max-new-tokens 2 turn {turn}")
            # The pass after the turn's cell (this cell's own runs after it has answered).
            after_turn = k.value("(COLLECTOR.last.full, COLLECTOR.last.describe())")
            assert after_turn[0] is False, f"turn {turn}: {after_turn[1]}"
            ok(k, "kept.append(_qwen3)")
    finally:
        assert "autoclean off" in ok(k, "%qwen3_autoclean off").stdout
        ok(k, "del kept\n%qwen3 --reset")
    ok(k, "results = [cycle('kept')]\nqwen3_jupyter.cleanup()")
    ok(k, "kept_list = results\nresults = [2]")  # control: the rule still fires for others
    assert k.value("qwen3_jupyter.cleanup().gc_pass") == (
        "full gc (`results` was rebound; its old value may be a stranded cycle)"
    )
    ok(k, "del results, kept_list")
