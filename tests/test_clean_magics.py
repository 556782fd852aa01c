"""`%%qwen3_clean`, `%qwen3_clean` and `%qwen3_autoclean` in a real kernel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kernel import WEAKREF_HELPERS, Execution, Kernel, alive, ended_as_interrupted, ok

SETUP = WEAKREF_HELPERS


@pytest.fixture(scope="module")
def k(kernel: Kernel) -> Iterator[Kernel]:
    ok(kernel, SETUP)
    yield kernel


def report_lines(execution: Execution) -> list[str]:
    return [line for line in execution.stdout.splitlines() if line.startswith("[qwen3] cleanup")]


def test_cell_result_displays_like_a_normal_cell(k: Kernel) -> None:
    plain = ok(k, "%%qwen3_clean\na = 20\na + 22")
    assert plain.result() == "42"
    assert k.value(f"Out[{plain.reply['execution_count']}]") == 42, "a plain result stays in Out"
    assert len(report_lines(plain)) == 1

    shown = ok(k, '%%qwen3_clean\nt = torch.ones(4 * MiB)\nrefs["shown"] = weakref.ref(t)\nt * 2')
    shown_text = shown.result()
    assert shown_text is not None and shown_text.startswith("tensor([2., 2.")
    n = shown.reply["execution_count"]
    assert k.value(f"{n} in Out") is False, "a tensor result is shown, then not kept"
    assert alive(k, "shown"), "no --drop: the cell's own variable stays"
    ok(k, "del t")

    quiet = ok(k, "%%qwen3_clean\n1 + 1;")
    assert quiet.result() is None, "a trailing ; hides the result as in a normal cell"


def test_body_runs_magics_and_honours_interactivity(k: Kernel) -> None:
    timed = ok(k, "%%qwen3_clean --quiet\n%time b = 2\nb * 3")
    assert "Wall time" in timed.stdout and timed.result() == "6"
    ok(k, "%config InteractiveShell.ast_node_interactivity = 'all'")
    try:
        both = ok(k, "%%qwen3_clean --quiet\n1\n2")
        assert [m["content"]["data"]["text/plain"] for m in both.of_type("execute_result")] == [
            "1",
            "2",
        ]
    finally:
        ok(k, "%config InteractiveShell.ast_node_interactivity = 'last_expr'")


def test_drop_deletes_only_what_the_cell_created(k: Kernel) -> None:
    ok(k, 'old = torch.ones(MiB)\nrefs["old"] = weakref.ref(old)')
    control = ok(k, '%%qwen3_clean\nmade = torch.ones(4 * MiB)\nrefs["made"] = weakref.ref(made)')
    assert alive(k, "made"), "control: without --drop the new variable survives"
    ok(k, "del made")

    dropped = ok(
        k,
        "%%qwen3_clean --drop --keep kept,other\n"
        "old = old * 1  # rebinding a name that existed: never dropped\n"
        "new = torch.ones(4 * MiB)\n"
        'refs["new"] = weakref.ref(new)\n'
        "kept = torch.ones(8)\n"
        "other = 2\n"
        "_private = torch.ones(8)\n"
        "import json as imported\n"
        "def defined(): pass\n"
        "class Defined: pass",
    )
    assert not alive(k, "new")
    assert k.value("('new' in globals(), '_private' in globals())") == (False, False)
    assert k.value("[n in globals() for n in ('kept', 'other', 'old')]") == [True, True, True]
    definitions = "[name in globals() for name in ('imported', 'defined', 'Defined')]"
    assert k.value(definitions) == [True, True, True], "imports and definitions hold no data"
    assert "dropped names (new, _private)" in report_lines(dropped)[0]
    assert "dropped" not in report_lines(control)[0]


def test_drop_keeps_what_the_cell_imported_or_defined_whatever_its_type(k: Kernel) -> None:
    """An imported value (`from math import pi`) and a decorated function are not modules or
    functions by type: --drop deleted them, and the next cell using them failed."""
    cell = ok(
        k,
        "%%qwen3_clean --drop\n"
        "import functools\n"
        "from math import pi\n"
        "from torch import float16 as half\n"
        "@functools.cache\n"
        "def helper(n): return n\n"
        "scratch = torch.ones(MiB)\n"
        'refs["scratch"] = weakref.ref(scratch)',
    )
    kept = "[name in globals() for name in ('functools', 'pi', 'half', 'helper')]"
    assert k.value(kept) == [True, True, True, True]
    assert not alive(k, "scratch"), "what it computed is still dropped"
    assert "dropped names (scratch)" in report_lines(cell)[0]
    ok(k, "del functools, pi, half, helper")


def test_a_keep_name_the_cell_did_not_make_drops_nothing_and_says_so(k: Kernel) -> None:
    """`--keep reslt` (a typo) kept nothing, and --drop deleted the `result` it meant."""
    typo = k.run("%%qwen3_clean --drop --keep reslt\nbig = torch.ones(8)\nresult = big.sum()")
    assert typo.status == "error" and typo.reply["ename"] == "UsageError"
    assert typo.reply["evalue"] == (
        "--keep reslt: the cell left no variable of that name (did you mean result?); "
        "nothing was dropped"
    )
    assert typo.stderr.count("\n") == 1, typo.stderr
    assert k.value("('big' in globals(), 'result' in globals())") == (True, True)
    failed = k.run("%%qwen3_clean --drop --keep out\nbig2 = torch.ones(8)\nout = 1 / 0")
    assert failed.reply["ename"] == "ZeroDivisionError", "the body's own error, not --keep's"
    assert k.value("'big2' in globals()") is True, "a name --keep meant may be missing: no drop"
    ok(k, "del big, result, big2")


def test_an_error_in_the_body_shows_fails_the_cell_and_frees_its_frames(k: Kernel) -> None:
    failed = k.run(
        "%%qwen3_clean --drop\n"
        "def fail():\n"
        "    big = torch.ones(4 * MiB)\n"
        '    refs["frame"] = weakref.ref(big)\n'
        '    raise ValueError("boom")\n'
        "fail()"
    )
    assert failed.status == "error", "Run All must stop at a failing %%qwen3_clean cell"
    assert failed.reply["ename"] == "ValueError" and failed.reply["evalue"] == "boom"
    assert failed.error is not None
    traceback = "\n".join(failed.error["traceback"])
    assert "----> 6" in traceback.replace("\x1b[39m", "").replace("\x1b[32m", ""), traceback
    assert "run_cell_magic" not in traceback, "the traceback starts at the body, like a cell"
    assert len(report_lines(failed)) == 1
    assert not alive(k, "frame"), "the failed call's tensor is freed right away"
    assert k.value("'fail' in globals()") is True, "a function the cell defined stays"


def test_mixed_indentation_in_the_body_is_shown_as_a_plain_cell_shows_it(k: Kernel) -> None:
    """Tokenizing the body failed before the run's `try`: ~40 lines through IPython and the
    package for an indentation typo a plain cell shows in four."""
    body = "if True:\n        a = 1\n    b = 2"
    plain = k.run(body)
    cleaned = k.run(f"%%qwen3_clean\n{body}")
    assert cleaned.status == "error" and cleaned.reply["ename"] == "IndentationError"
    assert cleaned.error is not None and plain.error is not None
    assert cleaned.error["traceback"] == plain.error["traceback"], cleaned.error["traceback"]
    ok(k, "x = 1")


def test_an_output_left_in_dunder_after_a_cell_assigned_underscore_is_freed(k: Kernel) -> None:
    """Once a cell assigns `_` itself, IPython stops moving `_`, `__` and `___` along, so `__`
    can keep an output the display hook already let go of."""
    ok(k, 'shown = torch.ones(4 * MiB) * 2\nrefs["dunder"] = weakref.ref(shown)\nshown')
    ok(k, "del shown\n'x'")
    ok(k, "for _ in range(2):\n    pass")
    ok(k, "'y'")
    assert alive(k, "dunder"), "control: an IPython-set name still holds the shown tensor"
    ok(k, "%qwen3_clean")
    assert not alive(k, "dunder")


def test_line_form_cleans_now_and_quiet_prints_nothing(k: Kernel) -> None:
    ok(k, "torch.ones(4 * MiB)")
    loud = ok(k, "%qwen3_clean")
    assert report_lines(loud) and report_lines(loud)[0].startswith("[qwen3] cleanup freed")
    again = ok(k, "%qwen3_clean")
    assert report_lines(again)[0].startswith("[qwen3] cleanup: nothing new to free")
    assert "--full scans them" in report_lines(again)[0]
    assert ok(k, "%qwen3_clean --quiet").stdout == ""


def test_verbose_lists_holders(k: Kernel) -> None:
    ok(k, "x = torch.zeros(1024, 1024)")
    verbose = ok(k, "%qwen3_clean --verbose")
    assert "  x: Tensor[1024, 1024] float32 4.0 MiB cpu (del x)" in verbose.stdout.splitlines()
    ok(k, "del x")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%qwen3_clean --bogus", "unknown option --bogus (see %qwen3_clean?)"),
        (
            "%qwen3_clean --verb",  # argparse alone would take it for --verbose
            "unknown option --verb (did you mean --verbose?) (see %qwen3_clean?)",
        ),
        ("%qwen3_clean stray", "unrecognized arguments: stray (see %qwen3_clean?)"),
        ("%qwen3_clean --drop", "--drop and --keep apply to a %%qwen3_clean cell"),
        ("%qwen3_clean --keep 1a", "not a name: '1a'"),
        ("%%qwen3_clean --keep\nx = 1", "--keep needs a value (see %qwen3_clean?)"),
        ("%%qwen3_clean --keep x\nx = 1", "add --drop"),
        ("%qwen3_autoclean maybe", "invalid choice: 'maybe'"),
        ("%qwen3_clean -q -v", "--quiet prints no report and --verbose a longer one: use one"),
        ("%%qwen3_clean --verbose --quiet\nnever = 1", "--quiet prints no report and --verbose"),
    ],
)
def test_bad_flags_are_one_line_usage_errors(k: Kernel, line: str, message: str) -> None:
    execution = k.run(line)
    assert execution.status == "error"
    assert execution.reply["ename"] == "UsageError"
    assert message in execution.reply["evalue"]
    assert execution.stderr.count("\n") == 1, execution.stderr
    assert k.value("'never' in globals()") is False, "a refused cell's body does not run"


def test_autoclean_reports_only_when_something_was_freed(k: Kernel) -> None:
    assert "autoclean off" in ok(k, "%qwen3_autoclean status").stdout
    assert "autoclean on" in ok(k, "%qwen3_autoclean on").stdout
    try:
        ok(
            k,
            "def make():\n"
            "    t = torch.ones(4 * MiB)\n"
            '    refs["auto"] = weakref.ref(t)\n'
            "    return t",
        )
        shown = ok(k, "make()")
        assert len(report_lines(shown)) == 1 and "freed" in report_lines(shown)[0]
        assert not alive(k, "auto")
        assert report_lines(ok(k, "1 + 1")) == [], "nothing freed: nothing printed"
        assert "autoclean on" in ok(k, "%qwen3_autoclean").stdout
        cleaned = ok(k, "%%qwen3_clean\ntorch.ones(4 * MiB)")
        assert len(report_lines(cleaned)) == 1, "a cleaning cell is not cleaned twice"
    finally:
        assert "autoclean off" in ok(k, "%qwen3_autoclean off").stdout
    ok(k, "torch.ones(4 * MiB)")
    assert report_lines(ok(k, "1")) == []


def alive_unseen(k: Kernel, name: str) -> bool:
    """Whether `refs[name]`'s object lives, read by a silent request (a user expression):
    IPython runs no cell hooks for it, so it does not count as the user's next cell."""
    msg_id = k.kc.execute("", silent=True, user_expressions={"v": f"refs[{name!r}]() is not None"})
    reply = k._reply_to(msg_id, 30)
    return bool(reply["user_expressions"]["v"]["data"]["text/plain"] == "True")


def test_autoclean_keeps_a_failed_cells_error_for_the_cell_that_debugs_it(k: Kernel) -> None:
    """Under autoclean, `%tb` said "No traceback available to show." and `%debug` "No
    traceback has been produced" after any failed cell: its traceback was released as it was
    shown (a small one without a word). It is now kept until the next cell starts, and past
    it when that cell debugs; an out-of-memory error's frames still go at once."""
    ok(
        k,
        "def train(error=ValueError):\n"
        "    w = torch.ones(4 * MiB)\n"
        '    refs["frame"] = weakref.ref(w)\n'
        "    raise error('loss is nan')",
    )
    ok(k, "%qwen3_autoclean on")
    try:
        assert k.run("train()").status == "error"
        assert alive_unseen(k, "frame"), "the failed cell's frames are kept for %debug"
        shown = k.run("%tb")
        assert "loss is nan" in str(shown.error), shown.messages
        assert "loss is nan" in str(k.run("%tb").error), "and for the next cell that debugs"
        assert alive_unseen(k, "frame"), "a cell that debugs keeps them"
        ok(k, "tb = None  # a TensorBoard writer's name is no %tb")
        assert not alive_unseen(k, "frame"), "any other cell frees them as it starts"
        assert k.run("train(torch.OutOfMemoryError)").status == "error"
        assert not alive_unseen(k, "frame"), "an out-of-memory error's frames go at once"
    finally:
        ok(k, "%qwen3_autoclean off")
    assert k.value("len(get_ipython().events.callbacks['pre_run_cell'])") == k.value(
        "len([c for c in get_ipython().events.callbacks['pre_run_cell'] "
        "if 'CleanMagics' not in repr(c)])"
    ), "autoclean off leaves no hook behind"
    ok(k, "del train, tb")


def test_unloading_the_extension_removes_magics_and_hook(fresh_kernel: Kernel) -> None:
    hooks = "len(get_ipython().events.callbacks['post_run_cell'])"
    before_loading = fresh_kernel.value(hooks)
    ok(fresh_kernel, "%load_ext qwen3_jupyter")
    loaded = fresh_kernel.value(hooks)
    ok(fresh_kernel, "%qwen3_autoclean on")
    assert fresh_kernel.value(hooks) == loaded + 1
    ok(fresh_kernel, "%qwen3_gauge")
    ok(fresh_kernel, "%qwen3 --model tiny --max-new-tokens 1 hi")  # "a loaded model stays"
    # `%reload_ext` (IPython's hint for a second `%load_ext`) turned these off without a word
    said = ok(fresh_kernel, "%unload_ext qwen3_jupyter").stdout
    assert said.strip() == (
        "[qwen3] extension unloaded: autoclean turned off (%qwen3_autoclean on turns it on "
        "again); 1 gauge closed (%qwen3_gauge); a loaded model stays"
    ), said
    assert fresh_kernel.value(hooks) == before_loading
    magics = fresh_kernel.value(
        "[n for kind in ('line', 'cell') for n in get_ipython().magics_manager.magics[kind]"
        " if n.startswith('qwen3_')]"
    )
    assert magics == []
    classes = "[type(c).__name__ for c in get_ipython().configurables]"
    assert not [c for c in fresh_kernel.value(classes) if c.endswith("Magics") and "Qwen3" in c]
    assert "CleanMagics" not in fresh_kernel.value(classes), "each reload left one more"
    ok(fresh_kernel, "%load_ext qwen3_jupyter")
    assert "autoclean off" in ok(fresh_kernel, "%qwen3_autoclean").stdout
    assert fresh_kernel.value(classes).count("Qwen3Magics") == 1
    assert ok(fresh_kernel, "%unload_ext qwen3_jupyter").stdout == "", "nothing to say"
    ok(fresh_kernel, "%load_ext qwen3_jupyter")


def test_a_load_that_fails_midway_says_what_it_turned_off_once(fresh_kernel: Kernel) -> None:
    """A failed `%load_ext` takes back what loaded, closing a gauge `gauge()` had opened, without
    a word; the next `%unload_ext` then reported it as its own."""
    k = fresh_kernel
    ok(
        k,
        "import qwen3_jupyter, qwen3_jupyter.kernel_comm as comm\n"
        "g = qwen3_jupyter.gauge()\nload = comm.load\n"
        "def failing(ip):\n    raise KeyboardInterrupt\ncomm.load = failing",
    )
    failed = k.run("%load_ext qwen3_jupyter")
    assert failed.status == "error"
    assert "[qwen3] extension unloaded: 1 gauge closed (%qwen3_gauge)" in failed.stdout
    ok(k, "comm.load = load\n%load_ext qwen3_jupyter")
    assert ok(k, "%unload_ext qwen3_jupyter").stdout == "", "said again by a later unload"


def test_a_load_that_fails_midway_leaves_nothing_and_an_interrupted_call_no_hook(
    fresh_kernel: Kernel,
) -> None:
    """A Ctrl-C (here: a component's failure) midway through `%load_ext` left the components
    already loaded, which `%unload_ext` could not reach (IPython did not count it loaded) and
    the next load doubled. And the hook an interrupted call registers (its cell's later calls
    do not start) outlived `%unload_ext`."""
    k = fresh_kernel
    state = (
        "(len(get_ipython().events.callbacks['pre_run_cell']), "
        "len(get_ipython().events.callbacks['post_run_cell']), "
        "len(get_ipython().input_transformers_cleanup), "
        "sorted(n for n in get_ipython().magics_manager.magics['line'] if 'qwen3' in n))"
    )
    before = k.value(state)
    ok(
        k,
        "import qwen3_jupyter.gauge_magics as gauge_magics\n"
        "load = gauge_magics.load\n"
        "def failing(ip):\n"
        "    raise KeyboardInterrupt\n"
        "gauge_magics.load = failing",
    )
    assert k.run("%load_ext qwen3_jupyter").status == "error"
    assert k.value(state) == before, "what loaded before the failure was taken back"
    ok(k, "gauge_magics.load = load\n%load_ext qwen3_jupyter")
    noted = k.run(
        "from qwen3_jupyter.interrupts import CELL_INTERRUPTS\nCELL_INTERRUPTS.note(True)"
    )
    assert ended_as_interrupted(noted)
    ok(k, "%unload_ext qwen3_jupyter")
    assert k.value(state) == before


def test_drop_names_the_definitions_it_keeps_that_hold_tensors(k: Kernel) -> None:
    """--drop keeps the functions and classes a cell defines; one holding a tensor (closure,
    class attribute) was kept silently and the README said definitions hold no data."""
    cell = ok(
        k,
        "%%qwen3_clean --drop\n"
        "def make():\n"
        "    x = torch.ones(MiB)\n"
        '    refs["closure"] = weakref.ref(x)\n'
        "    return lambda: x\n"
        "f = make()\n"
        "class Table:\n"
        "    data = torch.ones(2 * MiB)\n"
        'refs["class"] = weakref.ref(Table.data)\n'
        "def plain(): pass",
    )
    try:
        lines = cell.stdout.splitlines()
        assert "  f (closure) 4.0 MiB kept: defined by this cell, `del f` frees it" in lines, lines
        assert "  Table.data 8.0 MiB kept: defined by this cell, `del Table` frees it" in lines
        assert not any(line.startswith(("  make", "  plain")) for line in lines), lines
        assert alive(k, "closure") and alive(k, "class"), "named, not dropped"
    finally:
        ok(k, "del make, f, Table, plain\ngc.collect()  # a class is a cycle")
    assert not alive(k, "closure") and not alive(k, "class"), "the hint's `del` frees it"


def test_drop_keeps_the_answer_of_a_qwen3_call_in_the_cell(k: Kernel) -> None:
    """`_qwen3` is the package's own result (plain values): `--drop` deleted it as a name the
    cell created, so the answer was lost and no memory freed."""
    ok(k, "globals().pop('_qwen3', None)")
    dropped = ok(
        k,
        "%%qwen3_clean --drop\n"
        "%qwen3 --model tiny --greedy --no-think --max-new-tokens 2 hi\n"
        "scratch = torch.ones(8)",
    )
    assert "dropped names (scratch)" in report_lines(dropped)[0], "control: --drop dropped"
    assert k.value("_qwen3.prompt") == "hi"


def test_a_cleanup_in_a_thread_leaves_the_last_exception_and_outputs_alone(k: Kernel) -> None:
    """An `inference()` block ending in a background thread cleans up: it wiped the exception
    the user had just met in the notebook (`%debug`, `%tb`: "No traceback available")."""
    ok(k, 'shown = torch.ones(4 * MiB)\nrefs["thread_out"] = weakref.ref(shown)\nshown')
    ok(k, "del shown")
    failed = k.run("{'a': 1}['b']")
    assert failed.status == "error"
    ok(
        k,
        "import threading, qwen3_jupyter\nreports = []\n"
        "worker = threading.Thread(target=lambda: reports.append(qwen3_jupyter.cleanup()))\n"
        "worker.start(); worker.join()",
    )
    summary = k.value("reports[0].summary()")
    assert (
        "skipped output cache, last exception: a cleanup in a thread leaves the notebook's "
        "outputs and last exception alone" in summary
    ), summary
    assert k.value("repr(sys.last_value)") == "KeyError('b')"
    assert alive(k, "thread_out"), "the notebook's output is the notebook's to clear"
    ok(k, "%qwen3_clean")
    assert not alive(k, "thread_out")
