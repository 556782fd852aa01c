"""Batched generation: order, equality with one-by-one greedy runs, real out-of-memory back-off
against a measured memory budget, and nothing lost on interrupt."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.batching import BatchResults, generate_batch, parse_size
from qwen3_jupyter.engines.base import EngineError
from qwen3_jupyter.engines.eager import EagerEngine
from qwen3_jupyter.generation import GenerationOOM, GenerationOptions
from qwen3_jupyter.session import SESSION
from tests.kernel import Execution, Kernel, ended_as_interrupted, ok
from tests.oversized import hog_above

PROMPTS = [f"Question {i}: " + "why " * (i * 3) for i in range(7)]
GREEDY: dict[str, Any] = {"greedy": True, "think": False, "max_new_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def one_by_one(model_cache: Path) -> list[str]:
    loaded = SESSION.load(SESSION.choice("tiny"))
    options = GenerationOptions(**GREEDY)  # type: ignore[arg-type]
    return [EagerEngine(loaded).generate(p, options).answer for p in PROMPTS]


def test_order_and_outputs_match_one_by_one(one_by_one: list[str]) -> None:
    results = generate_batch(PROMPTS, batch_size=4, model="tiny", progress=False, **GREEDY)
    assert [r.prompt for r in results] == PROMPTS
    assert [r.answer for r in results] == one_by_one
    assert all(r.completion_tokens == 12 for r in results)
    assert results.report.held_batch_size == 4 and not results.report.back_offs
    report = results.report
    assert report.completion_tokens == 12 * len(PROMPTS)
    rate = report.completion_tokens / report.seconds
    assert f" s · {report.completion_tokens:,} tokens, {rate:.1f} tok/s · " in report.summary()


def test_results_typed_alone_are_a_few_lines_naming_their_prompts(model_cache: Path) -> None:
    """30 results typed alone were 5,370 characters of footers, with no prompt in sight; the
    report was a 16-field dataclass line."""
    from IPython.lib.pretty import pretty

    prompts = [f"prompt number {i} " + "why " * 30 for i in range(30)]
    results = generate_batch(prompts, batch_size=8, model="tiny", progress=False, **GREEDY)
    shown = repr(results)
    lines = shown.splitlines()
    assert lines[0] == f"BatchResults: 30 results · {results.report.summary()}"
    assert lines[1].startswith("[0] 'prompt number 0 why why") and "… → " in lines[1], lines[1]
    assert lines[2].startswith("[1] 'prompt number 1 why")
    assert lines[4] == "… 27 more: results[i] is one, pandas.DataFrame(results) a table"
    assert len(lines) == 5 and len(shown) < 900, shown
    assert pretty(results) == shown, "a cell's result shows the same lines"
    assert repr(results.report) == f"BatchReport: {results.report.summary()}"
    assert results[:2] == list(results)[:2], "still a list of Results"
    thinking = generate_batch(["hi"] * 2, model="tiny", progress=False, max_new_tokens=3, seed=1)
    assert not thinking[0].thinking_finished, "control: random weights think all the time"
    assert repr(thinking).splitlines()[1] == (  # it read '' though 3 tokens were written
        "[0] 'hi' → (no answer: still thinking at max_new_tokens; .thinking has it)"
    )
    import dataclasses

    served = BatchResults([dataclasses.replace(thinking[0], stop_reason="context")])
    assert "(no answer: the server ended it while thinking; " in repr(served), "not a budget"


def test_budget_forces_real_back_off_and_is_respected(one_by_one: list[str]) -> None:
    peaks = {
        size: generate_batch(
            PROMPTS[:4], batch_size=size, model="tiny", progress=False, **GREEDY
        ).report.peak_tensor_bytes
        for size in (2, 4)
    }
    assert peaks[2] < peaks[4], "measured tensor bytes must grow with the batch"
    budget = (peaks[2] + peaks[4]) // 2
    results = generate_batch(
        PROMPTS, batch_size=8, model="tiny", memory_budget=budget, progress=False, **GREEDY
    )
    report = results.report
    assert [b.batch_size for b in report.back_offs] == [8, 4]
    assert report.held_batch_size == 2
    assert report.peak_tensor_bytes <= budget
    assert [r.answer for r in results] == one_by_one
    assert "batch size 8 -> 2 held" in report.summary()


def test_out_of_memory_at_batch_size_one_says_so(tmp_path: Path) -> None:
    with pytest.raises(GenerationOOM, match="even at batch size 1") as info:
        generate_batch(
            PROMPTS[:2], batch_size=2, model="tiny", memory_budget=1000, progress=False, **GREEDY
        )
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.endswith(
        "over the memory budget of 1000 B: raise memory_budget or lower max_new_tokens"
    ), message


def test_fewer_prompts_than_the_batch_size_back_off_past_their_own_count() -> None:
    """Two prompts at batch size 4 ran as 2 rows, then 'halved' to 2: the same two rows again.
    And a run that ran out even at batch size 1 does not say some batch size held."""
    with pytest.raises(GenerationOOM, match="even at batch size 1") as info:
        generate_batch(
            PROMPTS[:2], batch_size=4, model="tiny", memory_budget=1000, progress=False, **GREEDY
        )
    report = info.value.results.report
    assert [(b.first_prompt, b.batch_size) for b in report.back_offs] == [(0, 4), (0, 1)]
    assert report.held_batch_size == 0
    summary = report.summary()
    assert "held" not in summary, summary
    assert "out of memory 2x: batch size 4 -> 1, out of memory even at 1" in summary, summary


SAMPLED: dict[str, Any] = {"think": False, "max_new_tokens": 8, "ignore_eos": True, "seed": 7}


@pytest.mark.parametrize("decode", ["eager", "fast"])
def test_a_seeded_batch_seeds_once_so_later_batches_sample_on(decode: str) -> None:
    """Each batch reseeded: rows 3-5 repeated rows 0-2 token for token. The whole seeded run is
    still reproducible."""
    prompts = ["Write a haiku"] * 6

    def run() -> list[tuple[int, ...]]:
        results = generate_batch(
            prompts, batch_size=3, model="tiny", decode=decode, progress=False, **SAMPLED
        )
        return [r.token_ids for r in results]

    first = run()
    assert first[3:] != first[:3], first
    assert len(set(first)) > 3, first
    assert run() == first, "the same seed, prompts and batch size give the same answers"


LONG_PROMPT_HOG = """
import torch
from tests.oversized import BEYOND_ANY_HOST

def hog_long_prompts(module, args):
    # a prefill wider than 40 tokens asks for more memory than any host has (decode steps
    # are one token wide): the long prompt runs out even alone
    if args[0].shape[1] > 40:
        torch.empty(BEYOND_ANY_HOST, dtype=torch.uint8)
"""
OOM_PROMPTS = ["short one", "short two", "long " * 60, "never reached"]


def test_running_out_even_at_batch_size_one_keeps_what_finished(tmp_path: Path) -> None:
    """The error says the finished results were kept: they are, on the error (`.results`),
    in the results file, and after a partial last line a killed run left (removed), one JSON
    object per line."""
    namespace: dict[str, object] = {}
    exec(LONG_PROMPT_HOG, namespace)
    model = SESSION.load(SESSION.choice("tiny")).model
    hook = model.model.embed_tokens.register_forward_pre_hook(namespace["hog_long_prompts"])
    out = tmp_path / "kept.jsonl"
    out.write_text('{"index": 0, "prompt": "from a run killed mid-wr', encoding="utf-8")
    try:
        with pytest.raises(GenerationOOM) as info:
            generate_batch(
                OOM_PROMPTS,
                batch_size=1,
                model="tiny",
                decode="eager",
                out=out,
                progress=False,
                **GREEDY,
            )
    finally:
        hook.remove()
    message = str(info.value)
    assert "(prompt 2; 2 finished results kept in .results)" in message, message
    kept = info.value.results
    assert [r.prompt for r in kept] == OOM_PROMPTS[:2] and kept.report.completed == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["prompt"] for line in lines] == OOM_PROMPTS[:2]
    assert kept.report.cut_line_removed, "a line no reader can read is gone"


def test_the_magic_keeps_what_finished_in_qwen3_when_running_out(
    kernel: Kernel, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(OOM_PROMPTS) + "\n", encoding="utf-8")
    ok = kernel.run(
        "%qwen3 --max-new-tokens 1 load\n" + LONG_PROMPT_HOG + "\n"
        "from qwen3_jupyter.session import SESSION as _s\n"
        "_hook = _s.loaded.model.model.embed_tokens.register_forward_pre_hook("
        "hog_long_prompts)"
    )
    assert ok.status == "ok", ok.error
    try:
        ex = kernel.run(
            f"%qwen3 --file {prompts} --batch-size 1 --greedy --no-think --max-new-tokens 4"
        )
    finally:
        kernel.run("_hook.remove()")
    assert ex.status == "error" and len(ex.stderr.strip().splitlines()) == 1, ex.stderr
    assert "2 finished results kept in _qwen3" in ex.stderr
    assert kernel.value("[r.prompt for r in _qwen3]") == OOM_PROMPTS[:2]


def test_running_out_of_host_memory_backs_off_like_any_out_of_memory(
    one_by_one: list[str],
) -> None:
    """The CPU allocator's failure (a RuntimeError) halves the batch as torch.OutOfMemoryError
    does: here every forward of more than two rows asks for more memory than any host has.
    (The fast path turns it into the same GenerationOOM: tests/test_magics.py, `--fast`.)"""
    hook = hog_above(SESSION.load(SESSION.choice("tiny")).model, rows_allowed=2)
    try:
        results = generate_batch(
            PROMPTS, batch_size=8, model="tiny", decode="eager", progress=False, **GREEDY
        )
    finally:
        hook.remove()
    report = results.report
    assert [b.batch_size for b in report.back_offs] == [8, 4]
    assert all("host memory: could not allocate" in b.message for b in report.back_offs)
    assert report.held_batch_size == 2
    assert [r.answer for r in results] == one_by_one


def test_a_prompt_too_long_for_the_model_fails_the_batch_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with pytest.raises(EngineError) as info:
        generate_batch(
            ["short", "why " * 5000, "also short"],
            batch_size=2,
            model="tiny",
            out=out,
            progress=False,
            **GREEDY,
        )
    message = str(info.value)
    assert message.startswith("prompt 1 (5,0") and message.endswith(
        "tokens) + max_new_tokens=12 exceeds the 4,096 positions of tiny: shorten it or "
        "lower max_new_tokens"
    ), message
    assert not out.exists(), "nothing was generated, so nothing was written"


def test_one_string_is_not_taken_for_a_list_of_one_character_prompts() -> None:
    with pytest.raises(
        TypeError, match=r"takes a list of prompts, not one string: pass \[prompt\]"
    ):
        generate_batch("Why is the sky blue?", model="tiny", progress=False)
    with pytest.raises(TypeError, match=r"takes a list of prompts, not one string"):
        generate_batch(b"Why?", model="tiny", progress=False)  # type: ignore[arg-type]
    for value in (None, 123):  # "'int' object is not iterable", from deep inside
        with pytest.raises(TypeError, match=r"^prompts=.* takes a list of prompts \(any iter"):
            generate_batch(value, model="tiny", progress=False)  # type: ignore[arg-type]


def test_a_table_or_a_dict_is_refused_not_asked_its_column_names_or_keys() -> None:
    """generate_batch(df) iterated the DataFrame: its column names were the prompts, and the
    batch "worked". A Series (a column) is a list of prompts, with its missing values named."""
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame({"review": ["good", "bad"], "score": [1, 0]})
    with pytest.raises(
        TypeError,
        match=r"^generate_batch takes a list of prompts, not a table \(DataFrame with columns "
        r"'review', 'score'\): .* pass the column of prompts, e\.g\. "
        r"generate_batch\(df\['review'\]\)$",
    ):
        generate_batch(table, model="tiny", progress=False)
    with pytest.raises(TypeError, match=r"not a dict \(its keys would be asked\)"):
        generate_batch({"a": "Why?"}, model="tiny", progress=False)  # type: ignore[arg-type]
    with_gap = pd.Series(["good", None, "bad"])
    with pytest.raises(TypeError, match=r"^prompt 1 is (nan \(float|None \(NoneType)\), not text"):
        generate_batch(with_gap, model="tiny", progress=False)  # (NaN from pandas 3 on)
    results = generate_batch(table["review"], model="tiny", progress=False, **GREEDY)
    assert [r.prompt for r in results] == ["good", "bad"]
    with pytest.raises(TypeError, match=r"not a table \(DataFrame without columns\): "):
        generate_batch(pd.DataFrame(), model="tiny", progress=False)  # it said "with columns :"


def test_a_list_of_lists_is_told_to_flatten_not_to_drop_missing_values() -> None:
    """A nested list (or a 2-D array) was told to drop missing values, as a None is."""
    np = pytest.importorskip("numpy")
    for rows in ([["a", "b"]], np.array([["a", "b"], ["c", "d"]])):
        with pytest.raises(TypeError, match=r"^prompt 0 is .*, not text: one prompt per item"):
            generate_batch(rows, model="tiny", progress=False)  # type: ignore[arg-type]


def test_a_missing_prompt_is_refused_not_asked_as_none_or_nan() -> None:
    """A list built from a table column can hold None or NaN; str() would ask "None" or "nan"."""
    with pytest.raises(TypeError, match=r"^prompt 1 is None \(NoneType\), not text: drop or fill"):
        generate_batch(["a", None, "b"], model="tiny", progress=False)  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"^prompt 0 is nan \(float\), not text"):
        generate_batch([float("nan")], model="tiny", progress=False)  # type: ignore[list-item]


def test_no_prompts_are_no_work_not_a_model_load(kernel: Kernel) -> None:
    """A filter that left no prompts loaded the model (seconds to minutes for real weights) to
    generate nothing; now the results are empty at once, no model is loaded and no server is
    asked (this one does not exist), and the cell says so in one line."""
    ok(kernel, "%qwen3 --unload\nimport qwen3_jupyter\nfrom qwen3_jupyter.session import SESSION")
    for where in ("", ", server='http://127.0.0.1:9/v1'"):
        empty = ok(kernel, f"r = qwen3_jupyter.generate_batch([]{where})")
        assert empty.stdout == "[qwen3] generate_batch got no prompts: nothing was generated\n"
        assert kernel.value("(len(r), r.report.total, SESSION.loaded is None)") == (0, 0, True)
        assert kernel.value("r.report.summary()") == "no prompts: nothing was generated"
    quiet = ok(kernel, "r = qwen3_jupyter.generate_batch([], progress=False)")
    assert quiet.stdout == ""


def test_no_prompts_are_said_outside_a_kernel_too(capsys: pytest.CaptureFixture[str]) -> None:
    """A script's log said nothing for an empty batch (the line was shown in kernels only). It
    is said on stderr, with the progress lines: stdout is what the script itself prints."""
    assert len(generate_batch([])) == 0
    said = capsys.readouterr()
    assert said.err == "[qwen3] generate_batch got no prompts: nothing was generated\n"
    assert said.out == ""
    generate_batch([], progress=False)
    assert capsys.readouterr() == ("", "")


SCRIPT_BUILDS_TINY = """
import sys, qwen3_jupyter
qwen3_jupyter.generate_batch(["hi"], model="tiny", max_new_tokens=2, progress=sys.argv[1] == "on")
"""


def test_a_script_sees_the_model_build_and_load_on_stderr(
    model_cache: Path, tmp_path: Path
) -> None:
    """Outside a kernel a call that built or loaded a model said nothing while it did (45 s
    for random:Qwen3-1.7B): now stderr has a line per step into a log (a pipe here: whole
    lines, not a flood), and nothing with progress=False."""
    import shutil
    import subprocess
    import sys

    from qwen3_jupyter import embedded

    embedded.ensure_built("tiny")  # the shared tokenizer, so each build below is seconds
    runs = {}
    for progress in ("on", "off"):
        cache = tmp_path / progress  # empty but for the tokenizer: tiny is built here
        shutil.copytree(model_cache / "tokenizer", cache / "tokenizer")
        env = {**os.environ, "QWEN3_JUPYTER_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
        runs[progress] = subprocess.Popen(
            [sys.executable, "-c", SCRIPT_BUILDS_TINY, progress],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    said = {name: run.communicate(timeout=180) for name, run in runs.items()}
    assert all(run.returncode == 0 for run in runs.values()), said
    assert said["on"][0] == said["off"][0] == "", "the notices go with the progress"
    lines = said["on"][1].splitlines()
    steps = ("[qwen3] building ", "[qwen3] loading ", "[qwen3] batch: ")
    ours = [line for line in lines if line.startswith(steps)]
    assert "[qwen3] building tiny: 100%" in ours, said["on"]
    assert "[qwen3] loading tiny on cpu (float32): 100%" in ours, said["on"]
    assert ours.index("[qwen3] building tiny: 100%") < len(ours) - 1  # the load came after
    assert len(ours) <= 6, ours  # each step's first and last, not each tensor's
    assert not any("\r" in line for line in lines), lines  # a log gets whole lines
    quiet = said["off"][1].splitlines()
    assert not [line for line in quiet if line.startswith(steps)], said["off"]
    assert "qwen3 batch" not in said["off"][1], said["off"]
    assert any("the first build" in line for line in quiet), said["off"]  # it built one too


SCRIPT_BATCH_INTO_A_LOG = """
import qwen3_jupyter
r = qwen3_jupyter.generate_batch(
    [f"p{i}" for i in range(12)], batch_size=2, model="tiny", max_new_tokens=2, greedy=True
)
print("done", len(r))
"""


@pytest.mark.parametrize("runner", ["python", "ipython"])
def test_a_scripts_log_gets_whole_lines_and_the_load_when_it_happens(
    model_cache: Path, tmp_path: Path, runner: str
) -> None:
    """`python job.py > answers.txt 2> log`: the batch's tqdm bar wrote every redraw after a
    carriage return (one line of thousands of characters that `tail -f` never finished, the
    final bar twice), "loaded tiny … random weights" came only after the whole batch (never,
    for a job killed midway), and it went to stdout, into the script's own output (under
    `ipython job.py` too)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = tmp_path / "job.py"
    job.write_text(SCRIPT_BATCH_INTO_A_LOG)
    ran = subprocess.run(
        [sys.executable, *(["-m", "IPython", "--no-banner"] if runner == "ipython" else []), job],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "done 12\n", "only what the script printed"
    assert "\r" not in ran.stderr, repr(ran.stderr[-500:])
    lines = ran.stderr.splitlines()
    loaded = next(i for i, line in enumerate(lines) if line.startswith("[qwen3] loaded tiny"))
    batch = [i for i, line in enumerate(lines) if line.startswith("[qwen3] batch: ")]
    assert batch and loaded < batch[0], lines  # said when it happened, before the batch
    assert lines[batch[0]].startswith("[qwen3] batch: 0/12 prompts"), lines
    assert lines[batch[-1]].startswith("[qwen3] batch: 12/12 prompts"), lines
    assert len(batch) <= 4, lines  # its first and last line, and one every few seconds


def test_a_terminal_sees_one_loading_line_rewritten_then_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminal the script's loading line is rewritten in place (throttled) and cleared
    when the load is done, as a cell's line is; a failed load leaves it, marked stopped."""
    import io

    from qwen3_jupyter.api_call import ApiCall

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    call = ApiCall(show_status=True)
    engine = call.engine(model="tiny", device="cpu", dtype="float32")
    assert engine.model_name == "tiny"
    for done in range(0, 101):
        call.progress("loading x", done, 100)  # 100 reports in well under 0.1 s: 2 shown
    call.end()
    text = screen.getvalue()
    assert text.endswith("[qwen3] loading x: 0%\x1b[K\r[qwen3] loading x: 100%\x1b[K\r\x1b[K")
    # A load's notice ("loaded tiny … random weights", when this process had none loaded) is
    # a line of its own, after the status line was cleared; nothing else ends a line.
    notice = re.search(r"\[qwen3\] loaded [^\n]*\n", text)
    if notice is not None:
        assert text[: notice.start()].endswith("\r\x1b[K"), text
        text = text[: notice.start()] + text[notice.end() :]
    assert "\n" not in text, text
    failing = ApiCall(show_status=True)
    failing.progress("loading y", 3, 10)
    failing.end(failed=True)
    assert screen.getvalue().endswith("\r[qwen3] loading y: 30%\x1b[K — stopped\n")
    assert ApiCall(show_status=False).console is None


def test_an_empty_prompt_is_refused_naming_its_index(kernel: Kernel) -> None:
    """Before, a blank prompt got a full answer to nothing (512 tokens)."""
    ok(kernel, "import qwen3_jupyter")
    for prompts, index in (('["a", "", "b"]', 1), ('["a", "b", "  "]', 2)):
        bad = kernel.run(f"qwen3_jupyter.generate_batch({prompts}, progress=False)")
        assert bad.reply["ename"] == "ValueError", bad.reply
        assert bad.reply["evalue"].startswith(f"prompt {index} is empty ("), bad.reply["evalue"]


@pytest.mark.parametrize(
    ("arguments", "error", "said"),
    [
        ({"batch_size": "4"}, TypeError, "batch_size='4' (str): must be a whole number >= 1"),
        ({"batch_size": 2.5}, TypeError, "batch_size=2.5 (float): must be a whole number >= 1"),
        ({"batch_size": True}, TypeError, "batch_size=True (bool): must be a whole number"),
        ({"batch_size": 0}, ValueError, "batch_size=0: must be >= 1"),
        ({"concurrency": 0}, ValueError, "concurrency=0: must be >= 1"),
        ({"concurrency": "2"}, TypeError, "concurrency='2' (str): must be a whole number"),
        ({"memory_budget": -5}, ValueError, "memory_budget=-5: must be >= 1 byte"),
        ({"memory_budget": 0}, ValueError, "memory_budget=0: must be >= 1 byte"),
        ({"memory_budget": "0"}, ValueError, "memory_budget: '0' is less than 1 byte"),
        ({"memory_budget": 1.5e9}, TypeError, "memory_budget=1500000000.0 (float): must be"),
        ({"out": 5}, TypeError, "out=5 (int): must be a file path or None"),
        ({"model": 123}, TypeError, "model=123 (int): must be text or None"),
        ({"progress": "no"}, TypeError, "progress='no' (str): must be True or False"),
        ({"max_new_tokens": "5"}, TypeError, "max_new_tokens='5' (str): must be a whole"),
        ({"think": "no"}, TypeError, "think='no' (str): must be True or False"),
        ({"seed": 10**30}, ValueError, f"seed={10**30}: must be from 0 to 2**63-1"),
    ],
)
def test_a_wrong_argument_is_one_line_before_any_model_is_used(
    arguments: dict, error: type[Exception], said: str
) -> None:
    """Before: a str batch size failed in a comparison, 2.5 as a slice index once the model was
    in use, and a budget of -5 ran and then reported 'over the memory budget of -5 B'."""
    loaded = SESSION.loaded
    with pytest.raises(error) as info:
        generate_batch(["a"], **{"model": "tiny", "progress": False, **arguments})
    assert str(info.value).startswith(said), str(info.value)
    assert SESSION.loaded is loaded, "nothing was loaded for a batch that cannot run"


def test_a_budget_of_nothing_in_the_environment_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QWEN3_JUPYTER_MEMORY_BUDGET", "0")
    with pytest.raises(ValueError, match=r"^\$QWEN3_JUPYTER_MEMORY_BUDGET: '0' is less than 1"):
        generate_batch(["a"], model="tiny", progress=False)


def test_out_file_has_a_line_per_prompt(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    results = generate_batch(
        PROMPTS[:5], batch_size=2, model="tiny", out=out, progress=False, **GREEDY
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(5))
    assert [r["answer"] for r in records] == [r.answer for r in results]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), ("1000", 1000)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("0", "'0' is less than 1 byte"),
        ("0.4", "'0.4' is less than 1 byte"),
        ("0GiB", "'0GiB' is less than 1 byte"),
        ("1.2.3", "'1.2.3' is not a size"),
        ("5ib", "'5ib' is not a size"),
        (".", "'.' is not a size"),
    ],
)
def test_parse_size_refuses_no_memory_and_malformed_sizes(text: str, said: str) -> None:
    """A budget of 0 ran the model and then failed 'over the memory budget of 0 B'; '1.2.3'
    and '5ib' escaped as float()'s and a KeyError's messages."""
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert str(info.value).startswith(said)


def test_magic_batch_and_interrupt_keep_finished_results(
    fresh_kernel: Kernel, tmp_path: Path
) -> None:
    k = fresh_kernel
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(12)) + "\n\n")
    out = tmp_path / "results.jsonl"
    assert k.run("%load_ext qwen3_jupyter").status == "ok"
    quick = k.run(f"%qwen3 --file {prompts} --batch-size 4 --greedy --no-think --max-new-tokens 4")
    assert quick.status == "ok", quick.stderr
    assert "[qwen3] batch · 12/12 prompts" in quick.stdout
    assert "| 11 | prompt 11 |" in quick.texts()[-1]
    assert k.value("len(_qwen3)") == 12

    msg_id = k.start(
        f"%qwen3 --file {prompts} --batch-size 2 --out {out} --greedy --no-think --ignore-eos "
        "--max-new-tokens 400"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not out.exists() or len(out.read_text().splitlines()) < 2
    ):
        time.sleep(0.1)
    k.interrupt()
    ex = k.collect(msg_id, timeout=60)
    assert ended_as_interrupted(ex), ex.stderr
    assert "interrupted: finished results kept" in ex.stdout
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    kept = k.value("len(_qwen3)")
    assert 2 <= len(records) == kept < 12
    assert [r["index"] for r in records] == list(range(kept))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%qwen3 --file /no/such.txt", "cannot read --file /no/such.txt"),
        ("%qwen3 --out r.jsonl hello", "--out goes with --file"),
        ("%qwen3 --batch-size 0 hello", "--batch-size must be >= 1"),
        ("%qwen3 --batch-size 8 hello", "--batch-size goes with --file PROMPTS.txt or --warmup"),
        ("%qwen3 --concurrency 3 hello", "--concurrency goes with --file PROMPTS.txt and --server"),
        ("%qwen3 --memory-budget lots --file x.txt", "--memory-budget: 'lots' is not a size"),
        ("%qwen3 --memory-budget 0 hello", "--memory-budget: '0' is less than 1 byte"),
        ("%qwen3 --hide-thinking --file x.txt", "--hide-thinking goes with one prompt"),
    ],
)
def test_batch_flags_bad_input(kernel: Kernel, line: str, expected: str) -> None:
    ex = kernel.run(line)
    assert ex.status == "error"
    assert expected in ex.stderr and len(ex.stderr.strip().splitlines()) == 1


def test_a_batch_shows_the_gauge_it_was_asked_for(kernel: Kernel, tmp_path: Path) -> None:
    """`--gauge` with `--file` was silently ignored: the help promises a live gauge while
    generating, left as a static copy."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    ex = ok(kernel, f"%qwen3 --gauge --file {prompts} --greedy --no-think --max-new-tokens 2")
    widgets = [
        m
        for m in ex.of_type("display_data")
        if "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
    ]
    assert len(widgets) == 1, "no live gauge during the batch"
    assert any("memory as read at" in text for text in ex.texts("text/plain")), "no static copy"
    assert "| 1 | two |" in ex.texts()[-1], "the table is still the call's result"


def test_prompt_files_from_other_editors_and_options_a_local_model_ignores(
    kernel: Kernel, tmp_path: Path
) -> None:
    """A byte-order mark (Windows editors save UTF-8 with one) is not part of the first prompt;
    a file in another encoding is one line naming the line to fix; --concurrency, which only a
    server uses, is named as ignored rather than silently dropped."""
    with_bom = tmp_path / "bom.txt"
    with_bom.write_bytes("\ufeffalpha\r\nbeta\r\n".encode())
    ex = kernel.run(
        f"%qwen3 --file {with_bom} --concurrency 8 --greedy --no-think --max-new-tokens 2\n"
        "print([r.prompt for r in _qwen3])"
    )
    assert ex.status == "ok", ex.stderr
    assert "['alpha', 'beta']" in ex.stdout
    assert (
        "[qwen3] --concurrency applies to a --server: ignored for a model in this kernel, which "
        "batches 4 prompts at a time (--batch-size)"
    ) in ex.stdout
    latin = tmp_path / "latin.txt"
    latin.write_bytes("first\ncaf\u00e9\n".encode("latin-1"))
    ex = kernel.run(f"%qwen3 --file {latin}")
    assert ex.status == "error"
    assert ex.stderr.strip() == (
        f"UsageError: --file {latin} is not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8"
    )


def test_an_out_path_that_cannot_be_written_fails_before_any_prompt_runs(
    kernel: Kernel, tmp_path: Path
) -> None:
    """A folder, or a path under a file: one line before the first batch, not a traceback once
    its answers are ready (a folder failed only then, with the batch's work lost)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out, why in ((tmp_path, "Is a directory"), (blocker / "r.jsonl", "Not a directory")):
        ex = kernel.run(f"%qwen3 --file {prompts} --out {out} --greedy --max-new-tokens 2")
        assert ex.status == "error"
        assert ex.stderr.strip() == f"UsageError: cannot write results to {out}: {why}", ex.stderr
        assert "qwen3 batch" not in ex.stdout + ex.stderr, "no batch started"
    with pytest.raises(OSError, match=f"cannot write results to {tmp_path}: Is a directory"):
        generate_batch(["a"], model="tiny", out=tmp_path, progress=False, **GREEDY)


def test_results_go_to_a_file_not_a_pipe_or_a_device(tmp_path: Path) -> None:
    """`out=/dev/full` was "a file holding something other than results", and reading a FIFO
    to check it waited for a writer, holding the call."""
    from qwen3_jupyter.batching import ResultsFileError, check_results_file

    fifo = tmp_path / "results.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ResultsFileError, match=r"^--out /dev/null: give no --out"):
        check_results_file("/dev/null")  # (which failed at the first append: "Invalid argument")
    for path, what in ((fifo, "a pipe"), (Path("/dev/full"), "a device or socket")):
        with pytest.raises(
            ResultsFileError, match=f"^cannot write results to {path}: it is {what}$"
        ):
            check_results_file(path)


def test_a_last_write_that_failed_says_the_file_lacks_results() -> None:
    """The last chunk's write failing said "the run stopped there: 6 of 6 prompts finished",
    as if nothing were missing."""
    from types import SimpleNamespace

    from qwen3_jupyter.batching import stopped_writing

    results = BatchResults(["r"] * 6, list(range(6)))  # type: ignore[list-item]
    results.report = SimpleNamespace(written=3, resumed=2)  # type: ignore[assignment]
    said = str(stopped_writing("could not append results to r.jsonl: No space", results, 6))
    assert said == (
        "could not append results to r.jsonl: No space; every prompt had finished (6), all kept "
        "in .results (5 in the file)"
    )


def test_a_results_file_that_fails_midway_stops_the_run_and_keeps_what_finished(
    fresh_kernel: Kernel, tmp_path: Path
) -> None:
    """A full disk or a lost mount midway: the OSError was a long traceback, and `_qwen3` was
    never set, so every finished result not yet in the file was lost; and the file ended in half
    a line, which every JSON-lines reader refused. Here the kernel may write files of 2,500
    bytes at most (the limit is the OS's, as a full disk's ENOSPC is): a batch's two lines
    fit, two batches' do not."""
    k = fresh_kernel
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {n}\n" for n in range(8)))
    out = tmp_path / "results.jsonl"
    ok(k, "%load_ext qwen3_jupyter\n%config Qwen3Magics.model = 'tiny'")
    ok(k, "%qwen3 --no-think --max-new-tokens 2 warm up")  # the model loads before the limit
    ok(
        k,
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2500, resource.RLIM_INFINITY))",
    )
    ex = k.run(f"%qwen3 --file {prompts} --batch-size 2 --no-think --max-new-tokens 4 --out {out}")
    assert ex.status == "error"
    said = ex.stderr.strip()
    assert said.startswith(f"UsageError: could not append results to {out}: File too large; ")
    kept = k.value("[r.prompt for r in _qwen3]")
    assert 0 < len(kept) < 8 and kept == [f"prompt {n}" for n in range(len(kept))]
    in_file = len(out.read_text(encoding="utf-8").splitlines())
    assert (
        said.endswith(
            f"the run stopped there: {len(kept)} of 8 prompts finished, all kept in _qwen3 "
            f"({in_file} in the file)"
        )
        and "\n" not in said
    ), said
    text = out.read_text(encoding="utf-8")  # the cut could split a character: this raised
    assert text.endswith("\n"), "the failed append was taken back, not left as half a line"
    written = [json.loads(line)["prompt"] for line in text.splitlines()]
    assert written == kept[: len(written)] and len(written) < len(kept), written


def test_out_never_appends_to_a_file_that_is_not_results(kernel: Kernel, tmp_path: Path) -> None:
    """`--out` appends, so a rerun keeps earlier results; it appended JSON to the prompts CSV
    it read (whose next read asked the JSON as prompts) and to any text file."""
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt,x\n"multi\nline",2\n')
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    ask = "--greedy --max-new-tokens 2"
    for out, said in (
        (f"{tmp_path}/./prompts.csv", "is the --file being read (results are appended to"),
        (str(notes), 'holds something other than results (their lines start with {"index")'),
    ):
        ex = kernel.run(f"%qwen3 --file {prompts} --out {out} {ask}")
        assert ex.status == "error" and said in ex.stderr, ex.stderr
        assert ex.stderr.count("\n") == 1, ex.stderr
    assert prompts.read_text() == 'prompt,x\n"multi\nline",2\n'
    assert notes.read_text() == "my notes\n"
    results = tmp_path / "results.jsonl"
    runs = [
        ok(kernel, f"%qwen3 --file {prompts} --out {results} {ask}"),
        ok(kernel, f"%qwen3 --file {prompts} --out {results} {ask} --max-new-tokens 3"),
    ]
    assert [json.loads(line)["index"] for line in results.read_text().splitlines()] == [0, 0]
    # One prompt is batched alone, as the footer says ("batch size 1 held"): the record said
    # the 4 asked for.
    assert {json.loads(line)["batch_size"] for line in results.read_text().splitlines()} == {1}
    # a results file takes more, and a run with other options says so (it said "written to":
    # read back, every prompt came twice without a word)
    assert f"written to {results}" in runs[0].stdout
    assert f"appended to {results} after its 1 earlier lines" in runs[1].stdout


def test_a_rerun_takes_what_its_results_file_holds_and_asks_the_rest(tmp_path: Path) -> None:
    """An interrupted run kept what finished in its results file; running it again asked
    every prompt anew and appended them all a second time. A cut-off last line (a killed
    run's) made every JSON lines reader fail on the whole file."""
    prompts = [f"prompt {i}" for i in range(6)]
    ask: dict[str, Any] = {"model": "tiny", "progress": False, **GREEDY}
    whole = tmp_path / "whole.jsonl"
    full = generate_batch(prompts, 2, out=whole, **ask)
    lines = whole.read_text(encoding="utf-8").splitlines(keepends=True)
    resumed = tmp_path / "resumed.jsonl"  # as an interrupt after the first batch leaves it
    resumed.write_text("".join(lines[:2]) + lines[2][:40], encoding="utf-8")
    again = generate_batch(prompts, 2, out=resumed, **ask)
    assert [r.token_ids for r in again] == [r.token_ids for r in full]
    assert again.indices == list(range(6)) and again.report.resumed == 2
    assert again.report.completion_tokens == sum(r.completion_tokens for r in full[2:])
    summary = again.report.summary()
    assert summary.startswith(f"6/6 prompts · 2 taken from {resumed}, an earlier run's"), summary
    assert "its last line, cut short by a killed run, was removed" in summary
    records = [json.loads(line) for line in resumed.read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in records] == list(range(6))
    done = generate_batch(prompts, 2, out=resumed, **ask)  # nothing left to ask
    assert done.report.resumed == 6 and len(resumed.read_text().splitlines()) == 6
    other = generate_batch(prompts[:2], 2, out=resumed, **{**ask, "max_new_tokens": 3})
    assert other.report.resumed == 0, "other options: asked again"
    assert len(resumed.read_text().splitlines()) == 8


def test_a_bad_out_is_refused_before_the_model_loads(kernel: Kernel, tmp_path: Path) -> None:
    """A `--out` (or `out=`) that the run refuses was refused only when the batch opened it,
    after the model had loaded: minutes with real weights, then a one-line typo error."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    ok(kernel, "%qwen3 --unload\nimport qwen3_jupyter")
    try:
        for out, said in ((notes, "holds something other than results"), (tmp_path, "Is a dir")):
            ex = kernel.run(f"%qwen3 --file {prompts} --out {out} --max-new-tokens 2")
            assert ex.status == "error" and said in ex.stderr, ex.stderr
            api = kernel.run(f"qwen3_jupyter.generate_batch(['one'], out={str(out)!r})")
            assert api.error_line.startswith("ResultsFileError: ") and said in api.error_line
            assert kernel.value("qwen3_jupyter.session.SESSION.loaded is None")
        assert notes.read_text() == "my notes\n"
        ok(
            kernel,
            f"%qwen3 --file {prompts} --out {tmp_path / 'new' / 'r.jsonl'} --max-new-tokens 2",
        )
        assert (tmp_path / "new" / "r.jsonl").read_text().count("\n") == 2  # a new file: fine
    finally:
        ok(kernel, "%qwen3 --max-new-tokens 1 hi")  # the module's kernel keeps its model


def _progress_line(execution: Execution, what: str) -> list[str]:
    """The texts one display showed, in order: the display that opened with `what: 0/` (its
    Markdown, or its plain text where it ended with a call's closing lines)."""
    shown = execution.of_type("display_data", "update_display_data")
    texts = [
        (m["content"].get("transient", {}).get("display_id"), m["content"]["data"]) for m in shown
    ]
    ids = {i for i, data in texts if data.get("text/markdown", "").startswith(f"*{what}: 0/")}
    assert len(ids) == 1, [data.get("text/markdown") for _, data in texts]
    (shown,) = ids
    return [
        data.get("text/markdown", data.get("text/plain", "")) for i, data in texts if i == shown
    ]


@pytest.mark.parametrize("decode", ["eager", "fast"])
def test_a_long_chunk_keeps_its_progress_line_ticking(kernel: Kernel, decode: str) -> None:
    """The line was rewritten only when a chunk finished: through one chunk (minutes with real
    weights) it said "0/4 prompts · 0.0 s" and looked hung. Now its time goes on."""
    execution = ok(
        kernel,
        "import qwen3_jupyter\n"
        "r = qwen3_jupyter.generate_batch(['a', 'b', 'c', 'd'], 4, greedy=True, think=False, "
        f"max_new_tokens=150, ignore_eos=True, decode={decode!r})",
    )
    line = _progress_line(execution, "qwen3 batch")
    waiting = [t for t in line if t.startswith("*qwen3 batch: 0/4 prompts · ")]
    assert len(set(waiting)) >= 2, f"the time never moved within the chunk: {line}"


def test_batch_progress_is_one_line_in_place_and_leaves_no_widget(
    kernel: Kernel, tmp_path: Path
) -> None:
    """tqdm's notebook bar kept 11 ipywidgets models alive after every batch (22 after one magic
    batch and one generate_batch). The progress is now a display line rewritten in place: it
    counts up to the whole, is cleared, and the cell ends with the batch's summary."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\nc\n")
    ok(kernel, "import ipywidgets, qwen3_jupyter\nwidgets_before = len(ipywidgets.Widget.widgets)")
    magic = ok(
        kernel, f"%qwen3 --file {prompts} --batch-size 2 --greedy --no-think --max-new-tokens 2"
    )
    api = ok(
        kernel,
        "r = qwen3_jupyter.generate_batch(['a', 'b', 'c'], 1, greedy=True, think=False, "
        "max_new_tokens=2)",
    )
    for execution, summary in (
        (magic, "[qwen3] batch · 3/3 prompts · "),
        (api, "[qwen3] generate_batch · 3/3 prompts · "),
    ):
        line = _progress_line(execution, "qwen3 batch")
        progress = [text for text in line if text.startswith("*qwen3 batch: ")]
        counts = [int(text.split(": ")[1].split("/")[0]) for text in progress]
        assert counts[0] == 0 and counts[-1] == 3 and counts == sorted(counts), line
        first = line.index(progress[0])
        assert line[first : first + len(progress)] == progress, f"one line, in place: {line}"
        # The line's display ends with the magic's table, or generate_batch's summary: one
        # output, not an emptied line beside them (which a saved notebook keeps).
        end = "| # | prompt | answer | tokens |" if execution is magic else summary
        assert line[-1].startswith(end), line
        assert summary in execution.said, execution.said
        widgets = [
            m["content"]["data"]["state"].get("_model_name")
            for m in execution.of_type("comm_open")
            if m["content"]["target_name"] == "jupyter.widget"
        ]
        assert not widgets, f"widgets opened: {widgets}; {execution.texts('text/plain')}"
    assert kernel.value("len(ipywidgets.Widget.widgets) - widgets_before") == 0


def test_the_progress_line_says_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """Elapsed time and an estimate of what is left from the rate so far, to the precision a
    person reading it wants."""
    from qwen3_jupyter import batch_progress

    progress = batch_progress.BatchProgress(12, "qwen3 batch", enabled=False)
    now = [100.0]
    monkeypatch.setattr(batch_progress.time, "perf_counter", lambda: now[0])
    progress._started = 100.0
    assert progress.text() == "qwen3 batch: 0/12 prompts · 0.0 s"
    progress.advance(3)
    progress.note("batch size 2 after out of memory")
    now[0] = 130.0
    assert progress.text() == (
        "qwen3 batch: 3/12 prompts · batch size 2 after out of memory · 30 s, about 1 min 30 s left"
    )
    progress.advance(9)
    assert progress.text().endswith("12/12 prompts · batch size 2 after out of memory · 30 s")
    assert [batch_progress.seconds(s) for s in (0.04, 9.94, 9.96, 59.4, 59.6, 61, 3725)] == [
        "0.0 s",
        "9.9 s",
        "10 s",
        "59 s",
        "1 min 00 s",
        "1 min 01 s",
        "1 h 02 min",
    ]


def test_a_server_batch_stopped_midway_says_which_prompt_each_kept_result_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stopped server batch keeps every request that finished, not only the first ones: its
    results had gaps and nothing said which prompt each answered (`zip(prompts, results)`
    paired them wrongly). Here the first prompt's request never ends; the second's does."""
    import signal
    import threading

    from qwen3_jupyter.engines.remote_batch import RetryCounter, run_concurrently
    from qwen3_jupyter.generation import Result

    released = threading.Event()

    def answer(index: int, prompt: str) -> Result:
        if index == 0:
            released.wait(10)
        return Result(prompt, f"answer to {prompt}", "", "m1", "server", False, 1, 1, 0.1, 10.0,
                      None, "server", "eos", True, engine="remote")  # fmt: skip

    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        results = run_concurrently(
            ["a", "b", "c"],
            answer,
            concurrency=3,
            cancel=lambda: None,  # the first request goes on: it is not kept
            retries=RetryCounter(),
            out=None,
            progress=False,
        )
    finally:
        timer.cancel()
        released.set()
    assert results.report.interrupted
    assert [r.prompt for r in results] == ["b", "c"] and results.indices == [1, 2]
    assert "(their prompts: .indices)" in results.report.summary()
    from qwen3_jupyter.display import show_batch  # the magic's table numbers them the same

    capsys.readouterr()
    show_batch(results, results.report)
    table = capsys.readouterr().out
    assert "| 1 | b | answer to b |" in table and "| 2 | c | answer to c |" in table, table
    whole = run_concurrently(
        ["a", "b"],
        answer,
        concurrency=2,
        cancel=lambda: None,
        retries=RetryCounter(),
        progress=False,
    )
    assert whole.indices == [0, 1] and "indices" not in whole.report.summary()


def test_an_option_of_the_other_engine_is_named_as_ignored(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The magic said so; the API dropped `concurrency=` for a model in this kernel without a
    word (and `memory_budget=` for a server, see test_remote_units)."""
    results = generate_batch(["a"], model="tiny", progress=False, concurrency=8, **GREEDY)
    assert len(results) == 1
    said = capsys.readouterr()
    assert "concurrency= applies to a server: ignored for a model in this kernel" in (
        said.out + said.err
    )


def test_a_script_without_stderr_still_loads_the_model(model_cache: Path) -> None:
    """With stderr closed (`2>&-`, pythonw) Python's `sys.stderr` is None: the progress line
    wrote to it from inside the loader, and the load failed ("could not load tiny …:
    AttributeError: 'NoneType' object has no attribute 'write'")."""
    import shlex
    import subprocess
    import sys

    script = (
        "import qwen3_jupyter as q\n"
        "print(len(q.generate_batch(['a'], model='tiny', max_new_tokens=2)))"
    )
    ran = subprocess.run(
        ["bash", "-c", f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} 2>&-"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 0 and ran.stdout.strip().splitlines()[-1] == "1", ran.stdout


SHOW_A_TABLE = """
import dataclasses
from qwen3_jupyter.display import show_batch
from qwen3_jupyter.batching import BatchResults
from qwen3_jupyter.generation import Result
one = Result(prompt="Is <b> & x bold? $40 or $55 for __init__",
             answer="Use a <div> | here, $5 or $x^2$", thinking="", model="m",
             device="cpu", think=False, prompt_tokens=3, completion_tokens=5, latency_s=0.1,
             tokens_per_s=50.0, peak_memory_bytes=None, memory_kind="", stop_reason="eos",
             thinking_finished=True)
table = BatchResults([one, dataclasses.replace(one, answer="", thinking="hmm")])
table.report = type("Report", (), {"summary": lambda self: "2/2 prompts"})()
show_batch(table, table.report)
"""


def test_a_batch_tables_plain_form_is_the_text_itself(kernel: Kernel) -> None:
    """The table's Markdown escapes an answer's HTML (the renderer would draw a `<div>`) and
    shows a prompt as typed: its prices were typeset as maths, which swallowed the rows
    between them, and `__init__` was bold. Its plain form, what text front ends and exports
    read, showed `Use a &lt;div&gt;` too."""
    (shown,) = ok(kernel, SHOW_A_TABLE).of_type("display_data")
    data = shown["content"]["data"]
    prompt = "Is &lt;b&gt; &amp; x bold? \\\\$40 or \\\\$55 for \\_\\_init\\_\\_"
    answer = "Use a &lt;div> \\| here, \\\\$5 or $x^2$"  # (the answer is Markdown: math kept)
    assert f"| 0 | {prompt} | {answer} | 5 |" in data["text/markdown"], data["text/markdown"]
    assert f"| 1 | {prompt} | *(thinking only)* | 5 |" in data["text/markdown"]
    prompt = "Is <b> & x bold? $40 or $55 for __init__"
    assert f"| 0 | {prompt} | Use a <div> \\| here, $5 or $x^2$ | 5 |" in data["text/plain"]
    assert f"| 1 | {prompt} | (thinking only) | 5 |" in data["text/plain"]


@pytest.mark.no_preload  # importing torch makes the first display come seconds after the call
def test_a_batch_in_a_thread_shows_in_the_cell_that_started_it(fresh_kernel: Kernel) -> None:
    """A thread's output went to whichever cell ran when it was sent: a batch started in a
    thread showed its progress, its load line and its summary under the next cell."""
    k = fresh_kernel
    started = ok(
        k,
        "%load_ext qwen3_jupyter\n"
        "import threading, time, qwen3_jupyter\n"
        "done = {}\n"
        "def run():\n"
        "    done['r'] = qwen3_jupyter.generate_batch(['a', 'b'], model='tiny', greedy=True, "
        "think=False, max_new_tokens=3)\n"
        "thread = threading.Thread(target=run); thread.start(); time.sleep(0.3)",
    )
    later = ok(k, "thread.join(120)\nlen(done['r'])")
    assert later.result() == "2", later.messages
    assert "[qwen3]" not in later.stdout and not later.of_type("display_data"), later.messages
    assert "import" not in started.stdout  # (its cell ended before anything was shown)


def test_a_second_run_on_a_results_file_being_written_is_refused(tmp_path: Path) -> None:
    """Two jobs started on one `out=` file (an overlapping cron run) each asked every prompt
    and appended its answers: 38 lines for 20 prompts, with no word. While one run writes the
    file, another is refused in one line; after it, the next run resumes from it."""
    from qwen3_jupyter.batching import ResultsFileError, _JsonLines

    out = tmp_path / "results.jsonl"
    other_run = _JsonLines(out)  # another run, holding the file as a run does
    other_run.hold()
    try:
        with pytest.raises(ResultsFileError, match="is being written by another run now"):
            generate_batch(["a", "b"], model="tiny", out=out, progress=False, **GREEDY)
        assert out.read_text() == "", "nothing was asked or written"
    finally:
        other_run.close()
    first = generate_batch(["a", "b"], model="tiny", out=out, progress=False, **GREEDY)
    again = generate_batch(["a", "b"], model="tiny", out=out, progress=False, **GREEDY)
    assert len(first) == len(again) == 2 and again.report.resumed == 2
    assert len(out.read_text().splitlines()) == 2, "the lock went with the run that held it"
