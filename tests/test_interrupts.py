"""Interrupts that Python would drop: raised inside a finalizer, a KeyboardInterrupt is printed
as "Exception ignored" and lost. `interrupts_that_land` (around torch.compile's first run) sends
it again until it ends the block."""

from __future__ import annotations

import _thread
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.interrupts import RUN_STOPPED, children_spared, interrupts_that_land
from tests.kernel import Execution, Kernel, ended_as_interrupted, ok


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


def test_an_interrupt_dropped_in_a_finalizer_still_ends_the_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """And quietly: Python printed the dropped one as "Exception ignored in ... Traceback ...
    KeyboardInterrupt" in the cell, above the one-line message (seen in a kernel whose warmup
    was interrupted inside torch.compile's weakref callbacks). Other unraisable errors still
    reach the hook that was there."""
    seen: list[BaseException] = []
    hook = lambda unraisable: seen.append(unraisable.exc_value)  # noqa: E731
    monkeypatch.setattr(sys, "unraisablehook", hook)
    _DropsTheInterrupt.fired = False
    steps: list[int] = []
    with pytest.raises(KeyboardInterrupt), interrupts_that_land():
        _FailsInItsFinalizer()
        _busy_block(steps)
    assert _DropsTheInterrupt.fired
    assert len(steps) < 100, f"the block ran {len(steps)} steps after the interrupt"
    assert signal.getsignal(signal.SIGINT) is before  # put back
    assert sys.unraisablehook is hook
    assert [type(error) for error in seen] == [ValueError], seen


class _DropsAnInterruptAnotherThreadTook:
    """The same, inside `children_spared`: the kernel's other thread took the SIGINT (the main
    thread blocks it) and Python runs the handler in the main thread, here in a finalizer."""

    fired = False

    def __del__(self) -> None:
        if not _DropsAnInterruptAnotherThreadTook.fired:
            _DropsAnInterruptAnotherThreadTook.fired = True
            _thread.interrupt_main(signal.SIGINT)
            time.sleep(0.01)


def test_an_interrupt_dropped_while_children_are_spared_still_ends_the_block() -> None:
    """The resend went to the main thread as a signal, which waits while the main thread blocks
    SIGINT (`children_spared`, around a compile): the compile ran to its end."""
    _DropsAnInterruptAnotherThreadTook.fired = False
    steps: list[int] = []
    with pytest.raises(KeyboardInterrupt), interrupts_that_land(), children_spared():
        for step in range(300):  # 3 s if nothing stops it
            steps.append(step)
            if step == 5:
                _DropsAnInterruptAnotherThreadTook()
            time.sleep(0.01)
    assert _DropsAnInterruptAnotherThreadTook.fired
    assert len(steps) < 100, f"the block ran {len(steps)} steps after the interrupt"
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set()), "left blocked"


class _FailsInItsFinalizer:
    def __del__(self) -> None:
        raise ValueError("not ours")


def test_a_block_that_ends_without_an_interrupt_leaves_nothing_behind() -> None:
    with interrupts_that_land():
        time.sleep(0.05)
    time.sleep(0.6)  # no resend comes later
    assert signal.getsignal(signal.SIGINT) is before


def test_a_signal_handler_raising_as_the_block_ends_still_puts_both_hooks_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Putting SIGINT's handler back runs pending signals' handlers, and one may raise: the
    handler and the unraisable hook are put back all the same (ours must not outlive the block:
    it would drop the user's later interrupts' reports)."""
    real = signal.signal
    calls: list[object] = []

    def restoring(signum: int, handler: object) -> object:
        calls.append(handler)
        if len(calls) == 2:  # the exit's first restore, where another handler raised
            raise RuntimeError("another signal's handler")
        return real(signum, handler)  # type: ignore[arg-type]

    hook = sys.unraisablehook
    monkeypatch.setattr(signal, "signal", restoring)
    with pytest.raises(RuntimeError), interrupts_that_land():
        pass
    assert len(calls) == 3
    assert signal.getsignal(signal.SIGINT) is before
    assert sys.unraisablehook is hook


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


def _interrupt_once(
    kernel: Kernel,
    code: str,
    started: Callable[[], bool],
    queued: Sequence[str] = (),
    queued_ids: list[str] | None = None,
) -> Execution:
    """Run `code`, interrupt it once `started()` (its answers are coming), and collect what the
    cell sent. `queued`: cells sent right after it, as Run All sends them (their message ids
    go to `queued_ids`)."""
    msg_id = kernel.start(code)
    for cell in queued:
        sent = str(kernel.kc.execute(cell, allow_stdin=False, stop_on_error=True))
        if queued_ids is not None:
            queued_ids.append(sent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not started():
        time.sleep(0.05)
    assert started(), "the call never started"
    kernel.interrupt()
    return kernel.collect(msg_id, timeout=60)


def _reply(kernel: Kernel, msg_id: str, timeout: float = 60) -> dict[str, Any]:
    """The shell reply to `msg_id` (an aborted cell publishes nothing else)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kernel.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return dict(msg["content"])


@pytest.fixture()
def api_kernel(fresh_kernel: Kernel) -> Kernel:
    ok(fresh_kernel, "%load_ext qwen3_jupyter\nimport qwen3_jupyter, pathlib")
    ok(fresh_kernel, "%qwen3 --max-new-tokens 1 hi")
    return fresh_kernel


def test_an_interrupted_generate_batch_says_so_and_the_queued_cells_do_not_run(
    api_kernel: Kernel, tmp_path: Path
) -> None:
    """Before, an interrupted generate_batch ended the cell "ok" and silent. Then it said what
    it kept, but still ended "ok", so the cells queued after it (Run All) ran on: one press of
    the stop button, and the next batch ran too. It ends as an interrupted cell ends now."""
    out = tmp_path / "results.jsonl"
    queued: list[str] = []
    batch = _interrupt_once(
        api_kernel,
        "r = qwen3_jupyter.generate_batch([f'prompt {i}' for i in range(12)], 2, "
        f"out={str(out)!r}, greedy=True, think=False, ignore_eos=True, max_new_tokens=400, "
        "progress=False)",
        lambda: out.exists() and len(out.read_text().splitlines()) >= 2,
        queued=["queued_cell_ran = True"],
        queued_ids=queued,
    )
    assert batch.status == "error", batch.stderr
    assert (batch.reply["ename"], batch.reply["evalue"]) == ("KeyboardInterrupt", RUN_STOPPED)
    assert batch.stderr == "", "the call said what it kept: no traceback on top"
    assert _reply(api_kernel, queued[0])["status"] == "aborted"  # (before the next cell's run)
    kept = api_kernel.value("len(r)")
    assert 2 <= kept < 12
    assert f"[qwen3] generate_batch interrupted: {kept}/12 finished results kept" in batch.stdout
    assert api_kernel.value("'queued_cell_ran' in dir()") is False
    assert ok(api_kernel, "after = 1").status == "ok"  # the next cell the user runs runs


@pytest.mark.parametrize("decode", ["eager", "fast"])
def test_a_batch_interrupted_in_its_first_chunk_reports_that_chunks_peak(
    api_kernel: Kernel, tmp_path: Path, decode: str
) -> None:
    """Interrupted while decoding its first chunk, a batch said "peak generation tensors 0 B"
    after seconds of decoding with a 2×2048 cache."""
    flag = tmp_path / "decoding"
    ok(
        api_kernel,
        "from qwen3_jupyter.session import SESSION\n"
        "hook = SESSION.loaded.model.lm_head.register_forward_pre_hook(lambda *a: "
        f"pathlib.Path({str(flag)!r}).touch())",
    )
    try:
        batch = _interrupt_once(
            api_kernel,
            "r = qwen3_jupyter.generate_batch(['a', 'b', 'c', 'd'], batch_size=2, greedy=True, "
            f"think=False, ignore_eos=True, max_new_tokens=1500, decode={decode!r}, "
            "progress=False)",
            flag.exists,
        )
        assert ended_as_interrupted(batch), batch.reply
        assert api_kernel.value("(len(r), r.report.interrupted)") == (0, True)
        assert api_kernel.value("r.report.peak_tensor_bytes") > 0
    finally:
        ok(api_kernel, "hook.remove()")


def test_an_interrupted_chat_says_so_and_the_cells_next_call_says_why_it_stops(
    api_kernel: Kernel, tmp_path: Path
) -> None:
    """Before, an interrupted chat() said nothing, and the cell's next call raised a bare
    `KeyboardInterrupt:`."""
    started = tmp_path / "streaming"
    chat = _interrupt_once(
        api_kernel,
        "with qwen3_jupyter.inference(model='tiny', think=False, ignore_eos=True) as chat:\n"
        "    first = chat('Talk', max_new_tokens=3000, on_text=lambda t: "
        f"pathlib.Path({str(started)!r}).touch())\n"
        "    second = chat('And again')\n",
        started.exists,
    )
    assert chat.status == "error"
    assert chat.reply["ename"] == "KeyboardInterrupt"
    assert chat.reply["evalue"] == "a call earlier in this cell was interrupted; run the cell again"
    shown = "\n".join(chat.reply["traceback"])  # under three of the package's frames, each
    assert "qwen3_jupyter/" not in shown, shown  # "***failed resolving arguments***"
    assert "second = chat('And again')" in re.sub(r"\x1b\[[0-9;]*m", "", shown), shown
    tokens = api_kernel.value("first.completion_tokens")
    assert f"[qwen3] chat interrupted: partial answer kept ({tokens} tokens)" in chat.stdout
    assert api_kernel.value("'second' in dir()") is False


SLOW_STEP = """
import pathlib, time
def _slowly(module, name, flag):
    original = getattr(module, name)
    def slow(*args, **kwargs):
        pathlib.Path(flag).write_text("in")
        time.sleep(3)
        return original(*args, **kwargs)
    setattr(module, name, slow)
    return original
"""


def _interrupt_in(kernel: Kernel, code: str, flag: Path) -> Execution:
    """Run `code` and interrupt it once the slowed step has started."""
    msg_id = kernel.start(code)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert time.monotonic() < deadline, "the slowed step never ran"
        time.sleep(0.02)
    kernel.interrupt()
    return kernel.collect(msg_id, timeout=60)


def test_an_interrupt_as_a_batch_wraps_up_keeps_its_results(
    api_kernel: Kernel, tmp_path: Path
) -> None:
    """An interrupt landing as a finished batch cleared its progress line (which waits on the
    kernel's output), or as the call printed its notices, was raised out of generate_batch:
    `r` was never set and every result was lost (a reviewer's 2 runs in 10). It is the stop it
    always is now: the results are kept and the cell ends as interrupted."""
    k = api_kernel
    ok(k, SLOW_STEP + "import qwen3_jupyter.batch_progress as bp, qwen3_jupyter.api_call as ac")
    for owner, method in (("bp.BatchProgress", "close"), ("ac.ApiCall", "end")):
        flag = tmp_path / method
        ok(k, f"_old = _slowly({owner}, {method!r}, {str(flag)!r})")
        ex = _interrupt_in(
            k, "r = qwen3_jupyter.generate_batch(['a', 'b'], model='tiny', max_new_tokens=2)", flag
        )
        ok(k, f"{owner}.{method} = _old")
        assert ended_as_interrupted(ex), (method, ex.stderr)
        assert k.value("len(r)") == 2, method
        ok(k, "del r")


def _one_line(ex: Execution, starts: str) -> None:
    message = ex.stderr.strip()
    assert ex.status == "error" and message.startswith(starts), message
    assert len(message.splitlines()) == 1, message


def test_interrupts_between_the_steps_of_a_call_a_cleanup_or_an_unload_are_one_line(
    api_kernel: Kernel, tmp_path: Path
) -> None:
    """Landing where no step reports it (setting up the answer's display, a cleanup's tensor
    count) an interrupt showed 40-230 frames; in an unload's memory release it left the old
    weights held until the next cleanup."""
    k = api_kernel
    ok(
        k,
        SLOW_STEP
        + "keep = [1, 2, 3]\nimport qwen3_jupyter.display as d, qwen3_jupyter.memory as m",
    )
    flag = tmp_path / "display"
    ok(k, f"_old = _slowly(d.StreamView, '__init__', {str(flag)!r})")
    ex = _interrupt_in(k, "%qwen3 --max-new-tokens 4 hi", flag)
    _one_line(ex, "UsageError: interrupted before the call could finish")
    ok(k, "d.StreamView.__init__ = _old")
    ok(k, "%qwen3 --no-think --max-new-tokens 2 hi")
    assert k.value("(keep, _qwen3.completion_tokens)") == ([1, 2, 3], 2)

    flag = tmp_path / "count"
    ok(
        k,
        "import sys\nc = sys.modules['qwen3_jupyter.cleanup']\n"
        f"_old = _slowly(c, 'live_tensor_bytes', {str(flag)!r})",
    )
    ex = _interrupt_in(k, "%qwen3_clean --verbose", flag)
    _one_line(ex, "UsageError: cleanup interrupted")
    ok(k, "c.live_tensor_bytes = _old\n%qwen3_clean")

    flag = tmp_path / "trim"
    ok(k, f"_old = _slowly(m, 'trim_host_heap', {str(flag)!r})")
    ex = _interrupt_in(k, "%qwen3 --unload", flag)
    assert ended_as_interrupted(ex), ex.stderr
    assert "the interrupt came while unloading: the unload was let finish" in str(ex.messages)
    assert "model object freed" in str(ex.messages)
    ok(k, "m.trim_host_heap = _old")
    assert k.value("__import__('qwen3_jupyter.session').session.SESSION.loaded is None")
    assert k.value("keep") == [1, 2, 3]


_CHILD = "import pathlib, sys, time; time.sleep(1.0); pathlib.Path(sys.argv[1]).write_text('whole')"


@pytest.mark.parametrize("spare", [False, True])
def test_an_interrupt_spares_the_compilers_child_processes_and_still_lands(
    tmp_path: Path, spare: bool
) -> None:
    """Jupyter sends an interrupt to the kernel's whole process group: a g++ that torch.compile
    ran from the kernel died mid-write, and the 0-byte `.so` it left failed every later compile
    of that step (in this kernel and the next ones, through the shared cache). A child started
    inside `children_spared` finishes its file through a SIGINT, and the interrupt still comes
    to this thread (by the block's end at the latest)."""
    import subprocess

    out = tmp_path / "out"
    landed = False
    try:
        with children_spared() if spare else contextlib.nullcontext():
            child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)])
            time.sleep(0.3)
            os.kill(child.pid, signal.SIGINT)  # as the kernel manager's killpg reaches it
            if spare:
                os.kill(os.getpid(), signal.SIGINT)  # and the kernel itself
            child.wait()
    except KeyboardInterrupt:  # at once where another thread takes it, else at the block's end
        landed = True
    child.wait()  # (the interrupt may have cut this thread's wait short)
    if spare:
        assert child.returncode == 0 and out.read_text() == "whole", "the child was killed"
        assert landed, "the kernel's own interrupt was lost"
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    else:  # the control: without it, the child dies of the interrupt
        assert child.returncode != 0 and not out.exists()


SCRIPT_INTERRUPTED = """
import os, signal, qwen3_jupyter
def on_text(text):  # Ctrl-C, while the first answer streams
    if not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)
fired = []
with qwen3_jupyter.inference(model="tiny", max_new_tokens=40, ignore_eos=True) as chat:
    print("first:", chat("hi", on_text=on_text).stop_reason, flush=True)
    try:
        chat("again")
    except KeyboardInterrupt as caught:
        print("second:", caught, flush=True)
    print("third:", chat("and again", max_new_tokens=2).stop_reason, flush=True)
    fired.clear()
    print("fourth:", chat("hi", on_text=on_text).stop_reason, flush=True)
    chat("and again")
    print("a line the script should not reach", flush=True)
"""


def test_a_scripts_ctrl_c_stops_the_script_at_its_next_call(model_cache: Path) -> None:
    """Outside IPython a call ended by Ctrl-C returns what it finished, and the script went on
    with its next call and exited 0; now that next call raises the interrupt (once: a script
    that catches it may go on)."""
    import subprocess

    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT_INTERRUPTED],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    said = [line for line in ran.stdout.splitlines() if not line.startswith("[qwen3] ")]
    assert said[:1] == ["first: interrupted"], (said, ran.stderr[-2000:])
    assert said[1].startswith("second: a call earlier in this program was interrupted"), said
    assert said[2:] == ["third: length", "fourth: interrupted"], "delivered once: then it ran"
    assert "should not reach" not in ran.stdout, "the second Ctrl-C did not stop the script"
    assert ran.returncode != 0, ran.returncode
    assert ran.stderr.rstrip().endswith("so this one did not start"), ran.stderr[-500:]


def test_ipython_running_a_script_scopes_an_interrupt_as_a_script(
    model_cache: Path, tmp_path: Path
) -> None:
    """`ipython script.py` has a shell but no cells: after one Ctrl-C every later call raised
    "a call earlier in this cell was interrupted", a try/except around one did not let the
    script go on, and no cell ever came to clear it."""
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(SCRIPT_INTERRUPTED)
    ran = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    said = [line for line in ran.stdout.splitlines() if line.split(":")[0] in STEPS]
    assert said[:1] == ["first: interrupted"], (said, ran.stdout[-2000:], ran.stderr[-2000:])
    assert said[1].startswith("second: a call earlier in this program was interrupted"), said
    assert said[2:] == ["third: length", "fourth: interrupted"], "delivered once: then it ran"
    printed = ran.stdout.splitlines()  # (IPython 8's traceback quotes the script's line)
    assert "a line the script should not reach" not in printed, "the second Ctrl-C did not stop it"


STEPS = ("first", "second", "third", "fourth")


SCRIPT_ENDS_INTERRUPTED = """
import os, signal, qwen3_jupyter
def on_text(text):
    if not fired:
        fired.append(1)
        os.kill(os.getpid(), signal.SIGINT)
fired = []
block = qwen3_jupyter.inference(model="tiny", max_new_tokens=20, ignore_eos=True)
chat = block.__enter__()
print("script:", chat("hi", on_text=on_text).stop_reason, flush=True)
"""


def test_python_i_gives_the_prompt_a_clean_start(model_cache: Path, tmp_path: Path) -> None:
    """`python -i script.py` whose last call was interrupted: the first call typed at `>>>`
    was refused as "a call earlier in this program was interrupted"; at the prompt an interrupt
    ends only its own call (README)."""
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(SCRIPT_ENDS_INTERRUPTED)
    ran = subprocess.run(
        [sys.executable, "-i", str(script)],
        input='print("prompt:", chat("again").stop_reason)\n',
        capture_output=True,
        text=True,
        timeout=240,
    )
    said = [line.removeprefix(">>> ") for line in ran.stdout.splitlines()]
    assert "script: interrupted" in said, (said, ran.stderr[-1500:])
    assert "prompt: length" in said, (said, ran.stderr[-1500:])
