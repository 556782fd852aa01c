"""`%qwen3` / `%%qwen3` through a real kernel: what the kernel really sends back."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.kernel import Kernel, ended_as_interrupted, ok
from tests.oversized import HOG_HOOK, checkpoint_too_large_for_any_host

FOOTER_PARTS = ("[qwen3] tiny on cpu", "tokens (", "tok/s", " s · ", "peak ", "freed ")


def test_streams_into_one_updating_display_and_prints_footer(kernel: Kernel) -> None:
    # 120 tokens take ~1 s on CPU: ~10 updates at the 0.1 s pace, several even on a fast host.
    ex = kernel.run("%qwen3 --max-new-tokens 120 --seed 0 --no-think What's a kernel? Don't guess.")
    assert ex.status == "ok", ex.stderr
    displays = ex.of_type("display_data")
    # The answer's updates: every status text ("*loading…*", "*building…*", "*generating…*")
    # is italic Markdown, so starts with "*"; the tiny model's answer here does not.
    updates = [
        m
        for m in ex.of_type("update_display_data")
        if m["content"]["data"]["text/markdown"]
        and not m["content"]["data"]["text/markdown"].startswith("*")
    ]
    stream_ids = {m["content"]["transient"]["display_id"] for m in updates}
    # One display (the answer) receives every streamed update: not a line per token.
    assert len(stream_ids) == 1
    *streamed, final = [m["content"]["data"]["text/markdown"] for m in updates]
    # The answer grew in place while it streamed: showing only the final answer (after a
    # placeholder) is not streaming.
    assert len(set(streamed)) >= 2, f"nothing streamed before the final answer: {streamed}"
    assert final, updates
    *loaded, footer = ex.stdout.splitlines()  # (the module's first call loads the model)
    assert all(line.startswith("[qwen3] loaded tiny (float32) on cpu in ") for line in loaded)
    for part in FOOTER_PARTS:
        assert part in footer
    assert "120 tokens" in footer
    # The magic returns nothing: no execute_result, nothing in Out.
    assert ex.result() is None
    assert kernel.value("len(Out)") == 0
    assert len(displays) >= 1


def test_a_captured_call_keeps_its_answer_once_not_every_update(kernel: Kernel) -> None:
    """`%%capture` keeps every update of a display as an output of its own: a 400-token answer
    was 234 outputs (380 KB, growing with the square of its length), all replayed by `cap()`.
    Captured, the call shows its answer once; the same call not captured streams (control)."""
    call = "%qwen3 --max-new-tokens 120 --ignore-eos --seed 0 --no-think Tell me more."
    assert len(ok(kernel, call).of_type("update_display_data")) >= 3
    ok(kernel, f"%%capture cap\n{call}")
    outputs = kernel.value("[o.data['text/plain'] for o in cap.outputs]")
    assert len(outputs) == 1, outputs
    assert kernel.value("_qwen3.answer") in outputs[0]
    assert kernel.value("cap.stdout").startswith("[qwen3] tiny on cpu")
    ok(kernel, "del cap")


def test_a_terminal_ipython_says_the_load_on_one_line_not_a_printed_line_per_step(
    model_cache: Path, tmp_path: Path
) -> None:
    """A terminal IPython prints every update of a display anew: loading the model printed a
    line per percent (28 for tiny) and an empty one where the line was cleared. There the call
    says its steps on stderr, as a script does, and stdout has the answer and the footer."""
    import subprocess
    import sys

    script = tmp_path / "ask.ipy"
    script.write_text(
        "%load_ext qwen3_jupyter\n%qwen3 --model tiny --greedy --max-new-tokens 3 --no-think hi\n"
        "%qwen3_clean --verbose\n"
    )
    ran = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", str(script)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = ran.stdout.splitlines()
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert any(line.startswith("[qwen3] tiny on cpu") for line in out), out
    assert not any("loading" in line or "importing" in line for line in out), out
    assert "" not in out[:-2], out  # no emptied status line
    steps = [line for line in ran.stderr.splitlines() if line.startswith("[qwen3] ")]
    assert any("loading tiny" in line for line in steps) and len(steps) <= 6, steps
    # A magic's report stays whole on stdout: its summary and the lines under it.
    cleanup = next(i for i, line in enumerate(out) if line.startswith("[qwen3] cleanup"))
    assert out[cleanup + 1].startswith("  model tiny: "), out


def test_a_call_that_loads_says_how_long_and_what_it_keeps(kernel: Kernel) -> None:
    """The first call of a kernel waits for the load (seconds to minutes with real weights)
    and memory goes up for good: the status line said "loading…" and vanished, and nothing said
    how long it took or what stays. Now the call that loads says both, and only that call."""
    ok(kernel, "%qwen3 --unload")
    first = ok(kernel, "%qwen3 --no-think --max-new-tokens 2 hi")
    ok(kernel, "from qwen3_jupyter.memory import format_bytes\nfrom qwen3_jupyter import session")
    weights = kernel.value(  # tied embeddings are one tensor under two names: count it once
        "format_bytes(sum({t.data_ptr(): t.nbytes "
        "for t in session.SESSION.loaded.model.state_dict().values()}.values()))"
    )
    *_, notice, footer = first.stdout.splitlines()  # said before the call's footer, not after it
    assert footer.startswith("[qwen3] tiny on cpu"), first.stdout
    match = re.fullmatch(
        r"\[qwen3\] loaded tiny \(float32\) on cpu in (\d+\.\d) s"
        r"(?: \(\d+\.\d s of it the first build, once per cache\))? · (.+) of weights, kept "
        r"until %qwen3 --unload · random weights: its answers are noise",
        notice,
    )
    assert match and match.group(2) == weights, (notice, weights)
    assert float(match.group(1)) > 0
    again = ok(kernel, "%qwen3 --no-think --max-new-tokens 2 hi")
    assert "loaded" not in again.stdout, again.stdout
    other = ok(kernel, "%qwen3 --dtype bfloat16 --no-think --max-new-tokens 2 hi")
    assert "loaded tiny (bfloat16) on cpu in " in other.stdout, other.stdout
    assert other.stdout.splitlines()[-2].endswith("· tiny (float32) on cpu was unloaded for it")
    ok(kernel, "%qwen3 --dtype float32 --no-think --max-new-tokens 2 hi")  # as the module had it


def test_loading_and_answer_share_one_output(kernel: Kernel) -> None:
    """The status line ("loading tiny…") becomes the answer: it was a display of its own,
    emptied after the load, which stayed in the saved notebook as an empty output above every
    answer that loaded a model. A call that fails still leaves no "generating…" behind."""
    ok(kernel, "%qwen3 --unload")
    ex = kernel.run("%qwen3 --max-new-tokens 6 --seed 0 --no-think Hi")
    assert ex.status == "ok", ex.stderr
    (shown,) = ex.of_type("display_data")
    display_id = shown["content"]["transient"]["display_id"]
    texts = [shown["content"]["data"]["text/markdown"]] + [
        m["content"]["data"]["text/markdown"]
        for m in ex.of_type("update_display_data")
        if m["content"]["transient"]["display_id"] == display_id
    ]
    assert texts[0].startswith("*loading tiny on cpu"), texts
    assert "*generating…*" in texts, texts
    assert texts[-1] and texts[-1] == kernel.value("_qwen3.answer"), texts
    ok(kernel, "%qwen3 --unload")
    failed = kernel.run("%qwen3 --no-think --max-new-tokens 4090 hi")  # loads, then refused
    assert failed.status == "error"
    (shown,) = failed.of_type("display_data")
    assert shown["content"]["data"]["text/markdown"].startswith("*loading tiny on cpu")
    updates = [m["content"]["data"]["text/markdown"] for m in failed.of_type("update_display_data")]
    assert updates and updates[-1] == "*stopped before the first token*", updates
    # A call that fails before it has a view keeps what its line last said, marked stopped:
    # never an empty output above the error.
    missing = kernel.run("%qwen3 --model /no/such/folder hi")
    assert missing.status == "error" and "does not exist" in missing.stderr
    assert "(/ is the nearest folder that does): point --model at the folder" in missing.stderr
    texts = [data.get("text/markdown") for data in missing.final_displays()]
    assert texts == ["*loading /no/such/folder on cpu (float32)…* — stopped"], texts


CACHE_BALLAST = """
import torch
from transformers import Cache
from qwen3_jupyter.memory import format_bytes, process_rss
from qwen3_jupyter.session import SESSION as _s
BALLAST_BYTES = 96 * 2**20

def cache_ballast(module, args, kwargs, output):
    for value in kwargs.values():
        if isinstance(value, Cache):
            keys = value.layers[0].keys  # a new tensor after every step (the cache grows)
            keys.ballast = torch.ones(BALLAST_BYTES // 4)  # written: resident, not just mapped
"""
"""A forward hook that hangs 96 MiB (one mmap'd block, returned to the OS when freed) on the
KV cache's newest key tensor: what a real model's cache is, and the tiny model's few KiB are
not. The block lives as long as the cache's tensors: alive at the last token, gone once the
call releases the cache. (The previous step's block goes with the previous key tensor.)"""

MiB = 2**20


def test_a_local_calls_footer_says_the_memory_it_measured(kernel: Kernel) -> None:
    """The footer's "peak …" and "freed …" are measurements, not placeholders: on CPU the peak
    is the host RSS sampled while generating (at least what the process held before the call,
    plus what the call's cache held), and "freed" is the RSS the release after the last token
    gave back (the cache). The tiny model's own cache is too small to show in RSS, so its
    "freed" is legitimately ~0: the ballast on the cache makes it a figure to check."""
    ok(kernel, "%qwen3 --eager --no-think --max-new-tokens 2 load")  # loaded: RSS settled
    ok(kernel, CACHE_BALLAST)
    ok(kernel, "_before = process_rss()")
    plain = ok(kernel, "%qwen3 --eager --no-think --max-new-tokens 8 --seed 3 hi")
    before, peak, kind, freed = kernel.value(
        "(_before, _qwen3.peak_memory_bytes, _qwen3.memory_kind, _qwen3.memory_freed_bytes)"
    )
    assert kind == "host RSS"
    assert peak >= before, (peak, before)  # the RSS sampled during the call, not a zero
    assert freed is not None and freed >= 0
    assert f"peak {kernel.value('format_bytes(_qwen3.peak_memory_bytes)')} host RSS" in plain.stdout
    assert f"freed {kernel.value('format_bytes(_qwen3.memory_freed_bytes)')}" in plain.stdout

    ok(kernel, "hook = _s.loaded.model.register_forward_hook(cache_ballast, with_kwargs=True)")
    try:
        ok(kernel, "_before = process_rss()")
        ex = ok(kernel, "%qwen3 --eager --no-think --max-new-tokens 8 --seed 3 hi")
    finally:
        ok(kernel, "hook.remove()")
    before, peak, freed, after = kernel.value(
        "(_before, _qwen3.peak_memory_bytes, _qwen3.memory_freed_bytes, process_rss())"
    )
    # Half the ballast as the margin: RSS moves by a few MiB on its own between cells.
    assert peak >= before + 48 * MiB, f"peak {peak / MiB:.1f} MiB, before {before / MiB:.1f} MiB"
    assert freed >= 48 * MiB, f"freed {freed / MiB:.1f} MiB of a 96 MiB cache"
    assert after < peak - 48 * MiB, "the memory said freed is still held"
    footer = ex.stdout.strip().splitlines()[-1]
    assert f"peak {kernel.value('format_bytes(_qwen3.peak_memory_bytes)')} host RSS" in footer
    assert f" · freed {kernel.value('format_bytes(_qwen3.memory_freed_bytes)')}" in footer


def test_last_result_is_plain_and_holds_no_tensors(kernel: Kernel) -> None:
    kernel.run("%qwen3 --max-new-tokens 8 --no-think --seed 1 Hi")
    fields = kernel.value("{k: type(v).__name__ for k, v in vars(_qwen3).items()}")
    assert fields["answer"] == "str" and fields["thinking"] == "str"
    assert fields["completion_tokens"] == "int" and fields["latency_s"] == "float"
    assert "Tensor" not in fields.values()
    assert kernel.value("_qwen3.completion_tokens") == 8
    assert kernel.value("_qwen3.tokens_per_s > 0")


def test_inline_gauge_shows_while_generating_and_stays_as_static_copy(kernel: Kernel) -> None:
    ok(kernel, "%qwen3 --no-think --max-new-tokens 1 Hi")  # loaded: no loading line below
    ex = kernel.run("%qwen3 --gauge --no-think --max-new-tokens 8 --seed 1 Hi")
    assert ex.status == "ok", ex.stderr
    widgets = [
        m
        for m in ex.of_type("display_data")
        if "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
    ]
    assert widgets, "no live gauge was displayed during the call"
    static = [m for m in ex.of_type("update_display_data") if "text/html" in m["content"]["data"]]
    assert static, "the live gauge was not replaced by a static copy"
    assert "[qwen3] tiny on cpu" in ex.stdout
    # The answer comes above the gauge, as it does when the call loads the model (its loading
    # line, shown before the gauge, becomes the answer): the gauge came first only then.
    shown = ex.of_type("display_data")
    assert "text/markdown" in shown[0]["content"]["data"], [m["content"]["data"] for m in shown]
    assert shown.index(widgets[0]) > 0


def test_cell_magic_takes_the_whole_cell_as_prompt(kernel: Kernel) -> None:
    ex = kernel.run("%%qwen3 --no-think --max-new-tokens 5 --seed 2\nfirst line?\n  second line")
    assert ex.status == "ok", ex.stderr
    assert kernel.value("_qwen3.prompt") == "first line?\n  second line"


def test_a_prompt_is_sent_as_typed_and_vars_fills_it_like_an_f_string(
    kernel: Kernel, tmp_path: Path
) -> None:
    """IPython would expand `$x` and `{x}` in a line magic (when all of them resolve): LaTeX and
    code in a prompt would change silently. Prompts go as typed; `--vars` fills `{...}` on
    request; option values (paths, numbers) still expand as in any magic."""
    prompts = tmp_path / "two prompts.txt"
    prompts.write_text("one\ntwo\n")
    ok(kernel, f"x = 5; price = 2.5; reviews = ['great', 'bad']; n = 3; path = {str(prompts)!r}")
    flags = "--no-think --greedy --max-new-tokens 2"
    ok(kernel, f"%qwen3 {flags} Solve $x^2 = 4$ and explain f'{{x}}'")
    assert kernel.value("_qwen3.prompt") == "Solve $x^2 = 4$ and explain f'{x}'"
    ok(kernel, f"%%qwen3 {flags}\nprint(f'{{x}}') costs $price")
    assert kernel.value("_qwen3.prompt") == "print(f'{x}') costs $price"

    filled = "${x} at {price:.2f}: {reviews[0]!r} {{set}} {n*2}"
    ok(kernel, f"%qwen3 --vars {flags} {filled}")
    assert kernel.value("_qwen3.prompt") == "$5 at 2.50: 'great' {set} 6"
    ok(kernel, "def ask(topic):\n    %qwen3 --vars --no-think --max-new-tokens 1 On {topic}\n")
    ok(kernel, "ask('owls')")
    assert kernel.value("_qwen3.prompt") == "On owls", "a line in a function sees its locals"

    tokens = {}
    for name, line in {
        "filled": "%%qwen3 --vars {flags} --system 'Price {{price:.2f}}'\nLine {{x}}",
        "typed out": "%%qwen3 {flags} --system 'Price 2.50'\nLine 5",
        "unfilled": "%%qwen3 {flags} --system 'Price {{price:.2f}}'\nLine 5",
    }.items():
        ok(kernel, line.format(flags=flags))
        tokens[name] = kernel.value("_qwen3.prompt_tokens")
    assert tokens["filled"] == tokens["typed out"] != tokens["unfilled"], tokens

    ok(kernel, "%qwen3 --no-think --greedy --ignore-eos --max-new-tokens $n hi")
    assert kernel.value("_qwen3.completion_tokens") == 3
    ok(kernel, f"%qwen3 --file {{path}} {flags}")
    assert kernel.value("[r.prompt for r in _qwen3]") == ["one", "two"]


def test_byte_order_marks_of_concatenated_prompt_files_are_not_prompt_text(
    kernel: Kernel, tmp_path: Path
) -> None:
    """Windows-saved UTF-8 files joined into one start each piece with a byte-order mark: a
    line holding only one was sent as the prompt '\\ufeff', and one starting a later line
    stayed glued to that prompt."""
    joined = tmp_path / "joined.txt"
    joined.write_bytes("\ufeffone\r\n\ufeff\r\n\ufefftwo\n\ufeff\ufeff three\n".encode())
    ok(kernel, f"%qwen3 --file {joined} --no-think --greedy --max-new-tokens 1")
    assert kernel.value("[r.prompt for r in _qwen3]") == ["one", "two", "three"]


def test_tab_offers_each_magics_options_and_known_values(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    """Tab after a magic offers its options, and for --model, --dtype, --server and
    %qwen3_autoclean their values (models from the Hugging Face cache too) — nothing else, as
    Jedi would add keywords or, after `--`, every builtin. Paths and the prompt are left to
    IPython; unloading takes the completion away."""
    hub = tmp_path / "hub"
    for folder in ("models--Qwen--Qwen3-8B", "models--gpt2", "datasets--some--data"):
        (hub / folder).mkdir(parents=True)
    (tmp_path / "prompts.txt").write_text("hi\n")
    k = Kernel({**kernel_env, "HF_HUB_CACHE": str(hub)})
    try:
        ok(k, "%load_ext qwen3_jupyter")
        assert k.complete("%qwen3 --no-th") == ["%qwen3 --no-think"]
        quoted = "%qwen3 --system 'Be brief' --no-th"  # a quoted value is one word
        assert k.complete(quoted) == ["%qwen3 --system 'Be brief' --no-think"]
        assert k.complete("%%qwen3 --gr") == ["%%qwen3 --greedy"]
        assert k.complete("%qwen3 --model ") == [  # not the default: it is not cached here
            f"%qwen3 --model {m}" for m in ("Qwen/Qwen3-8B", "gpt2", "random:Qwen3-1.7B", "tiny")
        ]
        assert k.complete("%qwen3 --model random:Q") == ["%qwen3 --model random:Qwen3-1.7B"]
        assert k.complete("%qwen3 --no-think --dtype b") == [
            "%qwen3 --no-think --dtype bf16",
            "%qwen3 --no-think --dtype bfloat16",
        ]
        assert "%qwen3 --server http://localhost:8000/v1" in k.complete("%qwen3 --server ")
        assert k.complete("%qwen3_gauge --") == [
            f"%qwen3_gauge {o}" for o in ("--all", "--compact", "--interval", "--stop")
        ]
        assert k.complete("%qwen3_clean --ve") == ["%qwen3_clean --verbose"]
        assert k.complete("%qwen3_clean --dr") == [], "the line form refuses --drop"
        assert k.complete("%%qwen3_clean --dr") == ["%%qwen3_clean --drop"]
        ok(k, "import torch")  # the devices it sees (none on a CPU machine), once imported
        gpus = k.value("torch.cuda.device_count()")
        devices = ["cpu", *(["cuda"] if gpus else []), *(f"cuda:{i}" for i in range(gpus))]
        assert k.complete("%qwen3 --device ") == [f"%qwen3 --device {d}" for d in devices]
        assert k.complete("%qwen3_autoclean o") == ["%qwen3_autoclean off", "%qwen3_autoclean on"]
        assert not any("--" in c for c in k.complete("%qwen3 Why is")), "the prompt is text"
        path = f"%qwen3 --file {tmp_path}/pro"
        assert f"%qwen3 --file {tmp_path}/prompts.txt" in k.complete(path), "IPython's own"
        (tmp_path / "reviews.csv").write_text("id,review text,score\n1,good,5\n")
        ok(k, f"table = {str(tmp_path / 'reviews.csv')!r}")
        assert k.complete("%qwen3 --file $table --no-think --field ") == [
            f"%qwen3 --file $table --no-think --field {c}" for c in ("'review text'", "id", "score")
        ], "the columns of the table --file names"
        assert k.complete("%qwen3 --file $table --field s") == [
            "%qwen3 --file $table --field score"
        ]
        matchers = "len(get_ipython().Completer.custom_matchers)"
        loaded = k.value(matchers)
        ok(k, "%unload_ext qwen3_jupyter")
        assert k.value(matchers) == loaded - 1
        assert "%qwen3 --no-think" not in k.complete("%qwen3 --no-th")
    finally:
        k.shutdown()


def test_trailing_question_mark_is_a_prompt_not_a_help_request(kernel: Kernel) -> None:
    ex = kernel.run("%qwen3 --max-new-tokens 4 --no-think What is a kernel?")
    assert ex.status == "ok"
    assert kernel.value("_qwen3.prompt") == "What is a kernel?"


def test_an_assigned_line_ending_in_a_question_mark_is_a_prompt_too(kernel: Kernel) -> None:
    """`r = %qwen3 ... What is it?` was IPython's help request ("Object `it` not found"): only
    lines starting with `%qwen3` were protected. It stays an assignment (of None: the magic
    returns nothing)."""
    ok(kernel, "_qwen3 = r = 'before'")
    ex = ok(kernel, "r = %qwen3 --model tiny --no-think --max-new-tokens 2 What is it?")
    assert "not found" not in ex.stdout, ex.stdout
    assert kernel.value("_qwen3.prompt") == "What is it?"
    assert kernel.value("r") is None
    ok(kernel, "def ask():\n    out = %qwen3 --max-new-tokens 2 --no-think And why?\n    return 1")
    ok(kernel, "ask()")
    assert kernel.value("_qwen3.prompt") == "And why?"


def test_the_cell_forms_body_keeps_its_first_lines_indentation(kernel: Kernel) -> None:
    """`%%qwen3` stripped the body, so a pasted indented block lost its first line's indent."""
    body = "    return x\n  else:\n    pass"
    ok(kernel, f"%%qwen3 --no-think --max-new-tokens 2 Fix this:\n\n  \n{body}\n\n")
    assert kernel.value("_qwen3.prompt") == f"Fix this:\n{body}"
    ok(kernel, f"%%qwen3 --no-think --max-new-tokens 2\n{body}  \n")
    assert kernel.value("_qwen3.prompt") == body


def test_a_qwen3_line_in_a_string_or_a_cell_magics_body_stays_text(
    kernel: Kernel, tmp_path: Path
) -> None:
    """Lines are made magic calls before IPython reads them (for the `?`): one inside a string,
    a `%%writefile` body or a `%%qwen3` prompt was rewritten to `get_ipython().run_line_magic`
    text. A cell magic that runs its body as Python (`%%time`) still reads it as a call."""
    line = "%qwen3 --max-new-tokens 2 --no-think Why?"
    ok(kernel, f's = """\n{line}\n"""')
    assert kernel.value("s") == f"\n{line}\n"
    ok(kernel, f"%%writefile {tmp_path / 'w.md'}\n{line}")
    assert (tmp_path / "w.md").read_text() == f"{line}\n"
    ok(kernel, f"%%qwen3 --max-new-tokens 2 --no-think Explain this line:\n{line}")
    assert kernel.value("_qwen3.prompt") == f"Explain this line:\n{line}"
    ok(kernel, f"%%time\n{line}")
    assert kernel.value("_qwen3.prompt") == "Why?"


def test_a_lone_question_mark_after_a_space_is_the_help_not_a_prompt(kernel: Kernel) -> None:
    """`%qwen3 ?` alone is the help; after `--` (the README: everything after it is text) or
    after options, `?` is the prompt."""
    kernel.run("_qwen3 = 'before'")
    ex = kernel.run("%qwen3 ?")
    assert ex.status == "ok"
    pages = [p for p in ex.reply.get("payload", []) if p.get("source") == "page"]
    assert pages and "--max-new-tokens" in pages[0]["data"]["text/plain"]
    assert kernel.value("_qwen3") == "before", "nothing was generated"
    for line in ("-- ?", "--no-think --max-new-tokens 2 ?"):  # `--` or options first: a prompt
        asked = kernel.run(f"%qwen3 --model tiny {line}")
        assert asked.status == "ok" and not asked.reply.get("payload"), (line, asked.reply)
        assert kernel.value("_qwen3.prompt") == "?", line


@pytest.mark.parametrize(
    "prompt",
    [
        "what is a - b",
        "What does --no-think do?",
        "Explain --max-new-tokens abc",  # not a valid value: text
        "-- Explain --no-think",  # `--` first: everything after it is text
        # a word after a value-taking option is text: refusing it suggested
        # `%qwen3 --system do What does pip install`
        "What does pip install --system do",
        "How do I pass --system prompt",
    ],
)
def test_option_like_words_in_a_prompt_stay_text(kernel: Kernel, prompt: str) -> None:
    ok(kernel, f"%qwen3 --max-new-tokens 2 --no-think {prompt}")
    assert kernel.value("_qwen3.prompt") == prompt.removeprefix("-- ")


def test_the_last_result_typed_alone_is_its_footer_and_answer(kernel: Kernel) -> None:
    """`_qwen3` alone printed a dataclass repr of several KB (every token id)."""
    ok(kernel, "%qwen3 --max-new-tokens 40 --no-think --ignore-eos hi")
    shown = ok(kernel, "_qwen3").result() or ""
    lines = shown.splitlines()
    assert lines[0].startswith("Result: [qwen3] tiny on cpu") and "40 tokens" in lines[0], shown
    assert lines[-1].startswith("answer: ") and "token_ids" not in shown, shown


def test_an_options_value_is_not_a_help_request(kernel: Kernel) -> None:
    """`--system -h` is the system prompt "-h" (the parser reads it so): it showed the help."""
    kernel.run("_qwen3 = 'before'")
    ok(kernel, "%qwen3 --system -h --max-new-tokens 2 --no-think hi")
    assert kernel.value("_qwen3.prompt") == "hi"


def test_one_help_rule_for_every_magic() -> None:
    """`%qwen3` reads -h/--help among the options only (skipping their values); a magic that
    takes only options takes it anywhere. One function answers both."""
    from qwen3_jupyter.magic_args import asks_help

    takes = {"--system": True, "--no-think": False, "--max-new-tokens": True}
    assert asks_help("-h", takes) and asks_help("--no-think --help", takes)
    assert asks_help("--max-new-tokens 4 -h hi", takes)
    assert not asks_help("--system -h hi", takes), "the system prompt '-h'"
    assert not asks_help("--no-think what does -h mean", takes), "prompt text"
    assert not asks_help("-- -h", takes) and not asks_help("-5 -h", takes)
    assert not asks_help("--system=-h hi", takes)
    assert asks_help("--all -h") and asks_help("on --help") and not asks_help("--all")


@pytest.mark.parametrize("line", ["%qwen3 --help", "%qwen3 -h", "%qwen3 --no-think --help"])
def test_help_flags_show_the_help_page(kernel: Kernel, line: str) -> None:
    kernel.run("_qwen3 = 'before'")
    ex = kernel.run(line)
    assert ex.status == "ok", ex.stderr
    pages = [p for p in ex.reply.get("payload", []) if p.get("source") == "page"]
    assert pages, "no help page"
    text = pages[0]["data"]["text/plain"]
    assert "--max-new-tokens" in text and "Options come before the prompt" in text
    assert kernel.value("_qwen3") == "before", "nothing was generated"
    for line in ("-- ?", "--no-think --max-new-tokens 2 ?"):  # `--` or options first: a prompt
        asked = kernel.run(f"%qwen3 --model tiny {line}")
        assert asked.status == "ok" and not asked.reply.get("payload"), (line, asked.reply)
        assert kernel.value("_qwen3.prompt") == "?", line


@pytest.mark.parametrize(
    ("magic", "option"),
    [("%qwen3_clean", "--verbose"), ("%qwen3_autoclean", "on|off"), ("%qwen3_gauge", "--interval")],
)
def test_help_flags_of_the_other_magics_show_their_help_page(
    kernel: Kernel, magic: str, option: str
) -> None:
    """It was "unknown option -h" (for --help, nothing closer); `%%qwen3_clean --help` shows
    the page and runs nothing."""
    for flag in ("-h", "--help"):
        ex = kernel.run(f"{magic} {flag}")
        assert ex.status == "ok", ex.stderr
        pages = [p for p in ex.reply.get("payload", []) if p.get("source") == "page"]
        assert pages and option in pages[0]["data"]["text/plain"], pages
    ex = kernel.run("%%qwen3_clean --help\nran_the_cell = True")
    assert ex.status == "ok" and not kernel.value("'ran_the_cell' in globals()")


def test_a_warmup_on_cpu_says_plain_calls_do_not_use_it(kernel: Kernel) -> None:
    """On CPU plain calls decode eagerly and give the warmed-up path back: the warmup said
    nothing of it, and looked wasted."""
    ex = kernel.run("%qwen3 --warmup", timeout=600)
    assert ex.status == "ok", ex.stderr
    assert (
        "fast decode ready" in ex.said
        and " · on cpu plain calls decode eagerly and give this back: it serves --fast calls "
        "(or %config Qwen3Magics.decode = 'fast')\n"
        in ex.said
    ), ex.said
    # Alone, its lines end the display its "compiling…" line used: no empty output.
    assert all(any(v.strip() for v in shown.values()) for shown in ex.final_displays())
    ok(kernel, "%qwen3 --max-new-tokens 2 --no-think hi")


def test_a_call_that_fails_leaves_no_generating_placeholder(kernel: Kernel) -> None:
    """`*generating…*` left above the error said the call was still running. (Text that
    streamed before a failure stays: tests/test_remote.py shows it.)"""
    ex = kernel.run("%qwen3 --no-think --max-new-tokens 4090 hi")  # too long: fails at once
    assert ex.status == "error"
    shown = {  # a display of its own, or the status line's it took over
        m["content"]["transient"]["display_id"]
        for m in ex.of_type("display_data", "update_display_data")
        if m["content"]["data"].get("text/markdown") == "*generating…*"
    }
    assert len(shown) == 1, "the stream display was not shown"
    last = [
        m["content"]["data"]["text/markdown"]
        for m in ex.of_type("update_display_data")
        if m["content"]["transient"]["display_id"] in shown
    ]
    assert last and last[-1] == "*stopped before the first token*", last


def test_think_and_no_think_map_to_enable_thinking(kernel: Kernel) -> None:
    kernel.run("%qwen3 --no-think --max-new-tokens 12 --seed 3 Hello")
    no_think = kernel.value(
        "(_qwen3.think, _qwen3.thinking, bool(_qwen3.answer), _qwen3.prompt_tokens)"
    )
    kernel.run("%qwen3 --think --max-new-tokens 12 --seed 3 Hello")
    think = kernel.value(
        "(_qwen3.think, bool(_qwen3.thinking), _qwen3.answer, _qwen3.prompt_tokens)"
    )
    assert no_think[:3] == (False, "", True)
    # Random weights never close </think> in 12 tokens: everything is (unfinished) thinking.
    assert think[:3] == (True, True, "")
    # enable_thinking=False pre-fills an empty think block: 4 more prompt tokens.
    assert no_think[3] == think[3] + 4


def test_thinking_summary_counts_words_in_english() -> None:
    """ "· 1 words" was what a one-word thought showed, collapsed and while hidden."""
    from qwen3_jupyter.display import render

    one = render("Hmm", "", finished=False, hide_thinking=False, streaming=False)[0]
    assert "Thinking (not finished) · 1 word</summary>" in one
    two = render("Hmm, well", "", finished=True, hide_thinking=False, streaming=False)[0]
    assert "Thinking · 2 words</summary>" in two
    hidden = render("Hmm", "", finished=False, hide_thinking=True, streaming=True)[0]
    assert "*thinking… (1 word)*" in hidden


def test_streaming_thinking_shows_its_end_in_a_few_lines_and_all_of_it_once_finished() -> None:
    """Streamed whole in an open <details> rewritten at every update, the thinking could not be
    collapsed (the next update opened it again) and a long one filled screens."""
    from qwen3_jupyter import display

    thinking = "\n".join(f"step {i}: " + "because " * 12 for i in range(40))
    live = display.render(thinking, "", finished=False, hide_thinking=False, streaming=True)[0]
    assert live.startswith("*Thinking… · 560 words*") and "<details" not in live
    assert "step 39: because" in live and "step 0:" not in live and "<blockquote>… " in live
    assert live.count("<br>") < display.THINKING_TAIL_LINES
    assert len(live) < display.THINKING_TAIL_CHARACTERS + 200
    done = display.render(thinking, "Yes.", finished=True, hide_thinking=False, streaming=True)[0]
    assert done.startswith("<details><summary>Thinking · 560 words") and "step 0:" in done
    short = display.render("Hmm.", "", finished=False, hide_thinking=False, streaming=True)[0]
    assert "<blockquote>Hmm.</blockquote>" in short, "a short thought is shown whole, uncut"


def test_unfinished_thinking_is_shown_collapsed_and_explained(kernel: Kernel) -> None:
    ex = kernel.run("%qwen3 --think --max-new-tokens 12 --seed 3 Hello")
    final = ex.texts()[-1]
    assert final.startswith("<details>") and "Thinking (not finished)" in final
    assert "Raise `--max-new-tokens`" in final
    assert "thinking not finished" in ex.stdout
    assert "(raise --max-new-tokens)" not in ex.stdout, "the answer's display says it already"
    hidden = kernel.run("%qwen3 --think --hide-thinking --max-new-tokens 12 --seed 3 Hello")
    assert "<details" not in hidden.texts()[-1]


TEMPLATES = """
from qwen3_jupyter.session import SESSION as S
tok = S.loaded.tokenizer
hybrid = tok.chat_template
switch = hybrid[hybrid.index("{%- if enable_thinking"):hybrid.rindex("{%- endif %}")]
instruct = hybrid.replace(switch, "")  # Qwen3-*-Instruct-2507: no switch, never thinks
thinking = hybrid.replace(switch, "{{- '<think>\\n' }}")  # Thinking-2507: opens <think>
"""


def test_a_model_whose_template_decides_thinking_is_followed(kernel: Kernel) -> None:
    """With thinking on by default, an Instruct-2507 answer streamed under "Thinking…" and,
    cut off by --max-new-tokens, was filed whole as unfinished thinking with no answer; with
    --no-think, a Thinking-2507 thought was shown as the answer. The template says which."""
    ok(kernel, "%qwen3 --model tiny --no-think --max-new-tokens 2 hi")
    ok(kernel, TEMPLATES)
    try:
        ok(kernel, "tok.chat_template = instruct")
        first = ok(kernel, "%qwen3 --max-new-tokens 12 --seed 1 hi")
        said = "[qwen3] tiny does not think (its chat template has no thinking switch)"
        assert said in first.stdout, first.stdout
        fields = "(_qwen3.think, _qwen3.thinking, bool(_qwen3.answer), _qwen3.stop_reason)"
        assert kernel.value(fields) == (False, "", True, "length")
        assert not [t for t in first.texts() if "Thinking" in t or "thinking" in t]
        assert "answer cut off at --max-new-tokens" in first.stdout
        again = ok(kernel, "%qwen3 --think --max-new-tokens 4 hi")
        assert "does not think" not in again.stdout, "said once"
        ok(kernel, "tok.chat_template = thinking")
        cot = ok(kernel, "%qwen3 --no-think --max-new-tokens 12 --seed 1 hi")
        assert "tiny always thinks (its chat template opens <think>)" in cot.stdout, cot.stdout
        assert kernel.value("(_qwen3.think, bool(_qwen3.thinking), _qwen3.answer)") == (
            True,
            True,
            "",
        ), "a thought cut off is thinking, not the answer"
    finally:
        ok(kernel, "tok.chat_template = hybrid")
    ok(kernel, "%qwen3 --max-new-tokens 4 --seed 1 hi")
    assert kernel.value("_qwen3.think") is True, "Qwen3's own template: as asked"


def test_chat_continues_and_reset_clears(kernel: Kernel) -> None:
    kernel.run("%qwen3 --reset")
    kernel.run("%qwen3 --no-think --max-new-tokens 6 --seed 4 One")
    alone = kernel.value("_qwen3.prompt_tokens")
    kernel.run("%qwen3 --chat --no-think --max-new-tokens 6 --seed 4 One")
    kernel.run("%qwen3 --chat --no-think --max-new-tokens 6 --seed 4 One")
    with_history = kernel.value("_qwen3.prompt_tokens")
    assert with_history > alone
    assert (
        kernel.value(
            "len(__import__('qwen3_jupyter.session').session.SESSION.conversation.messages)"
        )
        == 4
    )
    ex = kernel.run("%qwen3 --reset")
    assert "conversation cleared" in ex.stdout
    kernel.run("%qwen3 --chat --no-think --max-new-tokens 6 --seed 4 One")
    assert kernel.value("_qwen3.prompt_tokens") == alone


def test_a_system_prompt_stays_for_the_whole_chat(kernel: Kernel) -> None:
    """A persona set with --system on the first --chat turn vanished from the second: system
    turns were never kept. It stays now, until a new --system replaces it or --reset."""
    kernel.run("%qwen3 --reset")
    ok(kernel, '%qwen3 --chat --system "Be a pirate" --no-think --max-new-tokens 4 --seed 4 Hi')
    ok(kernel, "%qwen3 --chat --no-think --max-new-tokens 4 --seed 4 Again")
    ok(kernel, "from qwen3_jupyter.session import SESSION as S")
    expected = kernel.value(
        "len(S.loaded.tokenizer(S.loaded.tokenizer.apply_chat_template("
        "[{'role': 'system', 'content': 'Be a pirate'}, *S.conversation.messages[:2], "
        "{'role': 'user', 'content': 'Again'}], add_generation_prompt=True, "
        "enable_thinking=False, tokenize=False))['input_ids'])"
    )
    assert kernel.value("_qwen3.prompt_tokens") == expected, "turn 2 was asked without it"
    assert kernel.value("S.conversation.system") == "Be a pirate"
    ok(kernel, '%qwen3 --chat --system "Be brief" --no-think --max-new-tokens 4 --seed 4 More')
    assert kernel.value("S.conversation.system") == "Be brief"
    ok(kernel, "%qwen3 --reset")
    assert kernel.value("S.conversation.system") is None


def test_an_empty_system_clears_the_chats_system_prompt(kernel: Kernel) -> None:
    """`--system ""` on a --chat turn kept the persona (`options.system or self.system`)."""
    kernel.run("%qwen3 --reset")
    ok(kernel, '%qwen3 --chat --system "Be a pirate" --no-think --max-new-tokens 4 --seed 4 Hi')
    ok(kernel, '%qwen3 --chat --system "" --no-think --max-new-tokens 4 --seed 4 Again')
    ok(kernel, "from qwen3_jupyter.session import SESSION as S")
    assert kernel.value("S.conversation.system") is None
    expected = kernel.value(
        "len(S.loaded.tokenizer(S.loaded.tokenizer.apply_chat_template("
        "[*S.conversation.messages[:2], {'role': 'user', 'content': 'Again'}], "
        "add_generation_prompt=True, enable_thinking=False, tokenize=False))['input_ids'])"
    )
    assert kernel.value("_qwen3.prompt_tokens") == expected, "turn 2 was asked as a pirate"
    ok(kernel, "%qwen3 --reset")


def test_a_chat_turn_another_model_answers_says_it_continues_the_conversation(
    kernel: Kernel, tmp_path: Path
) -> None:
    """A `--chat` turn with another `--model` went on with the earlier turns and the persona,
    told only that the old model was unloaded."""
    from qwen3_jupyter import embedded

    other = tmp_path / "tiny-copy"
    shutil.copytree(embedded.ensure_built("tiny"), other)
    turn = "--chat --no-think --max-new-tokens 3"
    try:
        ok(kernel, "%qwen3 --reset")
        ok(kernel, f"%qwen3 --model tiny {turn} --system 'Be a pirate' hi")
        switched = ok(kernel, f"%qwen3 --model {other} {turn} and then?")
        assert (
            f"{other} continued the --chat conversation tiny had answered (1 turn and its "
            "--system); --reset starts a new one"
        ) in switched.stdout, switched.stdout
        again = ok(kernel, f"%qwen3 --model {other} {turn} more")
        assert "continued" not in again.stdout, again.stdout
    finally:
        ok(kernel, "%qwen3 --reset")
        ok(kernel, "%qwen3 --unload")  # the module's later calls load tiny, its default


def test_actions_without_a_prompt_refuse_options_they_would_ignore(kernel: Kernel) -> None:
    """`%qwen3 --reset --system "You are a pirate" --no-think` printed "conversation cleared"
    and dropped the rest; so did `--eager --model tiny --system x`."""
    kernel.run("keep_me = [41]")
    for line, expected in (
        (
            '%qwen3 --reset --system "You are a pirate" --model tiny --no-think '
            "--max-new-tokens 3 --gauge",
            "UsageError: --reset alone clears the conversation: --model, --no-think, --gauge, "
            "--max-new-tokens and --system would do nothing without a prompt (to start a new "
            "conversation at once: %qwen3 --reset --chat [options] PROMPT)",
        ),
        (
            "%qwen3 --eager --model tiny --system x",
            "UsageError: --eager alone gives back what the fast path keeps: --model and --system "
            "would do nothing without a prompt (to decode eagerly: %qwen3 --eager [options] "
            "PROMPT)",
        ),
        ("%qwen3 --unload --device cpu", "UsageError: --unload alone frees the model: --device"),
    ):
        ex = kernel.run(line)
        assert ex.status == "error", line
        assert ex.stderr.strip().startswith(expected), ex.stderr
        assert "conversation cleared" not in ex.stdout, ex.stdout
    assert kernel.value("keep_me") == [41]
    both = ok(kernel, "%qwen3 --reset --eager")  # the actions themselves still go together
    assert "conversation cleared" in both.stdout and "give" in both.stdout, both.stdout


def test_a_chat_turn_with_no_answer_says_why_once(kernel: Kernel) -> None:
    """Its notice said "(raise --max-new-tokens)" on the line after the footer's "answer cut
    off at --max-new-tokens (raise it for the rest)", and said it too to a model that ended
    its turn at once, where more tokens change nothing. Now it comes before the footer, leaves
    the budget to the footer, and names an ended turn."""
    kernel.run("%qwen3 --reset")
    ok(
        kernel,
        "import dataclasses\n"
        "from qwen3_jupyter.engines.eager import EagerEngine\n"
        "answering = EagerEngine.generate\n"
        "ended_as = None\n"
        "def blank(self, *args, **kwargs):\n"
        "    result = answering(self, *args, **kwargs)\n"
        "    stop = ended_as or result.stop_reason\n"
        "    return dataclasses.replace(result, answer='', stop_reason=stop)\n"
        "EagerEngine.generate = blank",
    )
    said = {}
    try:
        for ended_as in ("length", "eos"):
            ok(kernel, f"ended_as = {ended_as!r}")
            ex = ok(kernel, "%qwen3 --chat --no-think --max-new-tokens 2 --seed 3 Hello")
            assert kernel.value("_qwen3.answer") == "", "control: the turn had no answer"
            said[ended_as] = ex.stdout.splitlines()[-2:]
    finally:
        ok(kernel, "EagerEngine.generate = answering")
    notice, footer = said["length"]
    assert notice == (
        "[qwen3] this --chat turn has no answer: it was not added to the conversation"
    ), said
    assert footer.endswith("answer cut off at --max-new-tokens (raise it for the rest)"), said
    notice, footer = said["eos"]
    assert notice == (
        "[qwen3] this --chat turn has no answer (the model ended its turn without one): it was "
        "not added to the conversation"
    ), said
    assert footer.startswith("[qwen3] tiny on cpu") and "max-new-tokens" not in footer, said


def test_a_configured_server_is_named_and_an_empty_server_flag_sets_it_aside(
    kernel: Kernel,
) -> None:
    """With `%config Qwen3Magics.server` set, `--device cpu` was refused as "not with --server",
    which the user never typed; and nothing could set the server aside for one call."""
    ok(kernel, "%config Qwen3Magics.server = 'http://127.0.0.1:9/v1'")
    try:
        ex = kernel.run("%qwen3 --device cpu --no-think --max-new-tokens 2 hi")
        assert ex.stderr.strip() == (  # the flags typed, not all five that could be
            "UsageError: --device applies to a model in this kernel, not with the server set "
            'by %config Qwen3Magics.server (--server "" uses the model in this kernel)'
        ), ex.stderr
        ex = kernel.run("%qwen3 --eager --dtype bf16 hi")
        assert ex.stderr.strip().startswith(
            "UsageError: --dtype and --eager apply to a model in this kernel, not with"
        ), ex.stderr
        ok(kernel, '%qwen3 --server "" --device cpu --no-think --max-new-tokens 2 hi')
        assert kernel.value("(_qwen3.prompt, _qwen3.model)") == ("hi", "tiny")
        flagged = kernel.run("%qwen3 --server http://127.0.0.1:9/v1 --device cpu hi")
        assert "not with --server" in flagged.stderr, flagged.stderr
    finally:
        ok(kernel, "%config Qwen3Magics.server = ''")


def test_every_display_has_a_plain_text_form(kernel: Kernel) -> None:
    """A console or a notebook converted to text shows text/plain: every display and update
    was `<IPython.core.display.Markdown object>`, the answer nowhere."""
    ex = ok(kernel, "%qwen3 --no-think --max-new-tokens 12 --seed 3 hello")
    bundles = [m["content"]["data"] for m in ex.of_type("display_data", "update_display_data")]
    assert bundles
    assert not [b for b in bundles if "IPython.core.display" in b["text/plain"]], bundles
    assert bundles[-1]["text/plain"] == kernel.value("_qwen3.answer")


def test_a_chat_turn_with_no_answer_is_not_kept(kernel: Kernel) -> None:
    """A --chat turn that ran out while thinking was kept as an empty assistant turn, which
    the next turn built on."""
    kernel.run("%qwen3 --reset")
    ex = ok(kernel, "%qwen3 --chat --think --max-new-tokens 4 --seed 3 Hello")
    assert kernel.value("(_qwen3.answer, _qwen3.thinking_finished)") == ("", False)
    assert "this --chat turn has no answer" in ex.stdout, ex.stdout
    assert (
        kernel.value(
            "len(__import__('qwen3_jupyter.session').session.SESSION.conversation.messages)"
        )
        == 0
    )
    ok(kernel, "%qwen3 --chat --no-think --max-new-tokens 4 --seed 3 Hello")
    assert (
        kernel.value(
            "len(__import__('qwen3_jupyter.session').session.SESSION.conversation.messages)"
        )
        == 2
    )
    kernel.run("%qwen3 --reset")


def test_help_is_complete(kernel: Kernel) -> None:
    ex = kernel.run("%qwen3?")
    pages = [p for p in ex.reply.get("payload", []) if p.get("source") == "page"]
    text = pages[0]["data"]["text/plain"] if pages else ex.stdout
    for flag in (
        "--model",
        "--think",
        "--no-think",
        "--hide-thinking",
        "--temperature",
        "--top-p",
        "--top-k",
        "--max-new-tokens",
        "--seed",
        "--system",
        "--vars",
        "--chat",
        "--reset",
        "--unload",
        "--stop",
        "_qwen3",
    ):
        assert flag in text, flag
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)  # read as plain text: no reST markup left
    assert "``" not in plain and "Usage::" not in plain, plain[:400]
    assert not any(line.strip() == "::" for line in plain.splitlines()), plain[:400]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("%qwen3 --tempreture 0.5 hi", "unknown option --tempreture (did you mean --temperature?)"),
        ("%qwen3 --verb hi", "unknown option --verb; see %qwen3?"),  # not "--server?"
        (  # a misspelt option is not a prompt: no "put -- before a prompt that starts with '-'"
            "%qwen3 --max-new-token 5 hi",
            "UsageError: unknown option --max-new-token (did you mean --max-new-tokens?); "
            "see %qwen3?\n",
        ),
        ("%qwen3 -x marks the spot", "see %qwen3? — put -- before a prompt that starts with '-'"),
        ("%qwen3", "empty prompt"),
        ("%qwen3 --no-think", "empty prompt"),
        ("%qwen3 --top-k abc hi", "--top-k needs a whole number, not 'abc' (see %qwen3?)"),
        ("%qwen3 --max-new-tokens  hi", "--max-new-tokens needs a whole number, not 'hi'"),
        ("%qwen3 --top-p high hi", "--top-p needs a number, not 'high'"),
        ("%qwen3 --temperature 0 hi", "--temperature must be > 0"),
        ("%qwen3 --temperature inf hi", "--temperature must be > 0 and finite"),
        ("%qwen3 --top-p 1.5 hi", "--top-p must be in (0, 1]"),
        (
            "%qwen3 --greedy --temperature 0.5 --top-k 5 hi",
            "--greedy always takes the likeliest token, so --temperature and --top-k would do "
            "nothing: drop one of them",
        ),
        (
            "%qwen3 --greedy --seed 3 hi",
            "--greedy draws no random numbers, so --seed would do nothing: drop one of them",
        ),
        ("%qwen3 --think --no-think hi", "--think and --no-think contradict: keep one"),
        ("%qwen3 --no-think --think hi", "--no-think and --think contradict: keep one"),
        ("%qwen3 --max-new-tokens 0 hi", "--max-new-tokens must be >= 1"),
        ("%qwen3 --seed", "--seed needs a value"),
        ("%qwen3 --system 'unclosed hi", "--system: a quote is not closed"),
        ('%qwen3 --system "a \\"b hi', "--system: a quote is not closed"),
        ("%qwen3 --greedy=yes hi", "--greedy takes no value"),
        ("%qwen3 --unload hi", "--unload goes alone"),
        ("%qwen3 --file p.txt --chat", "--chat continues one conversation"),
        ("%qwen3 --dtype float8 hi", "invalid choice: 'float8'"),
        ("%qwen3 --dtype bf8 hi", "invalid choice: 'bf8'"),
        ("%qwen3 --model /no/such/dir hi", "model path '/no/such/dir' does not exist"),
        (
            "%qwen3 --model nobody/no-such-model hi",
            "looked for a local folder and in the Hugging Face cache",
        ),
        ("%qwen3 --device cuda hi", "no CUDA GPU is visible here"),
        ("%qwen3 --device mps hi", "--device mps: no mps device here; use --device cpu"),
        ("%qwen3 --warmup --eager", "--warmup builds the fast path, which --eager gives back"),
        (
            "%qwen3 --vars about {no_such_name}",
            "--vars: {no_such_name}: name 'no_such_name' is not defined in this notebook",
        ),
        ("%qwen3 --vars a } alone", "--vars: a single } with no { before it"),
        ("%qwen3 --vars --system '{nope}' hi", "--vars, in --system: {nope}: name 'nope'"),
        ("%qwen3 --vars {keep_me[7]}", "--vars: {keep_me[7]} raised IndexError"),
        ("%qwen3 --vars --file p.txt", "--vars fills a prompt typed in the cell"),
        ('%qwen3 ""', "empty prompt"),
        ("%qwen3 --no-think '  '", "empty prompt"),
        ("%qwen3 --vars {' '}", "empty prompt: --vars filled it with nothing but blanks"),
        (
            "%qwen3 --greedy Why is the sky blue? --max-new-tokens 8 --no-think",
            "UsageError: options go before the prompt: %qwen3 --greedy --max-new-tokens 8 "
            "--no-think Why is the sky blue?; put -- first to send them as text",
        ),
        (
            "%qwen3 Say 'a - b' --system='be brief'",
            "options go before the prompt: %qwen3 --system='be brief' Say 'a - b';",
        ),
        (  # the cell form's first line is prompt text too: it was sent, and the call thought
            "%%qwen3 --max-new-tokens 2 Summarise this --no-think\nsome text",
            "options go before the prompt: %%qwen3 --max-new-tokens 2 --no-think Summarise this;",
        ),
    ],
)
def test_bad_input_is_one_line_and_loses_nothing(kernel: Kernel, line: str, expected: str) -> None:
    kernel.run("keep_me = [41]\n%qwen3 --max-new-tokens 1 warm up")
    ex = kernel.run(line)
    assert ex.status == "error"
    message = ex.stderr.strip()
    assert expected in message + "\n", message
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    assert kernel.value("keep_me") == [41]
    assert kernel.value("__import__('qwen3_jupyter.session').session.SESSION.loaded.name") == "tiny"


@pytest.mark.parametrize(
    ("options", "system"),
    [
        ('--system="be brief"', "be brief"),  # the rest of the line was the prompt
        ("--system='be brief'", "be brief"),
        ('--system "say \\"hi\\" twice"', 'say "hi" twice'),  # a 56-line shlex traceback
        ('--system "--terse"', "--terse"),  # "expected one argument"
        ("--system C:\\notes\\x", "C:\\notes\\x"),  # unquoted: kept as written
    ],
)
def test_option_values_are_read_as_a_shell_would(kernel: Kernel, options: str, system: str) -> None:
    ok(kernel, f"%qwen3 {options} --greedy --max-new-tokens 2 --no-think hi")
    result = "(_qwen3.prompt, _qwen3.completion_tokens, _qwen3.thinking)"
    assert kernel.value(result) == ("hi", 2, ""), "options after the value were lost"
    ok(kernel, "from qwen3_jupyter.session import SESSION\nfrom qwen3_jupyter import generation")
    tokens = (  # the prompt as it is with exactly `system` as the system prompt
        "len(SESSION.loaded.tokenizer(generation.prompt_text(SESSION.loaded.tokenizer, 'hi', "
        f"generation.GenerationOptions(system={system!r}, think=False)))['input_ids'])"
    )
    assert kernel.value(f"{tokens} == _qwen3.prompt_tokens"), "another system prompt was used"


def test_dtype_takes_the_names_users_type(kernel: Kernel) -> None:
    """fp32 is float32: tiny on the CPU is already float32, so nothing loads again."""
    kernel.run("%qwen3 --max-new-tokens 1 warm up")
    model = "__import__('qwen3_jupyter.session').session.SESSION.loaded"
    before = kernel.value(f"id({model}.model)")
    ok(kernel, "%qwen3 --dtype fp32 --max-new-tokens 1 hi")
    assert kernel.value(f"{model}.dtype") == "float32"
    assert kernel.value(f"id({model}.model)") == before, "the same model, not a reload"


def test_interrupt_stops_promptly_keeps_partial_answer_and_kernel(fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    assert k.run("%load_ext qwen3_jupyter").status == "ok"
    assert k.run("%qwen3 --max-new-tokens 2 warm up").status == "ok"
    msg_id = k.start("%qwen3 --no-think --ignore-eos --max-new-tokens 3000 --seed 5 Talk")
    # Wait for streaming to start, then interrupt.
    deadline = time.monotonic() + 60
    seen_updates = 0
    while time.monotonic() < deadline and seen_updates < 2:
        msg = k.kc.get_iopub_msg(timeout=60)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "update_display_data"
        ):
            seen_updates += 1
    assert seen_updates >= 2
    interrupted_at = time.monotonic()
    k.interrupt()
    ex = k.collect(msg_id, timeout=30)
    assert time.monotonic() - interrupted_at < 5, "interrupt was not prompt"
    assert ended_as_interrupted(ex), ex.stderr
    assert "interrupted: partial answer kept" in ex.stdout
    assert " · freed " in ex.stdout, "what the release after an interrupt freed is said too"
    stop, tokens, answer = k.value("(_qwen3.stop_reason, _qwen3.completion_tokens, _qwen3.answer)")
    assert stop == "interrupted" and 0 < tokens < 3000 and answer
    assert k.run("%qwen3 --max-new-tokens 3 --no-think still alive").status == "ok"


UNKEPT_TENSOR_BYTES = (
    "__import__('qwen3_jupyter.memory').memory.live_tensor_bytes().get('cpu', 0) - sum("
    "k.nbytes for k in __import__('qwen3_jupyter.session').session.SESSION.kept_memory())"
)
"""Live tensor bytes in the kernel beyond what an engine keeps on purpose (a decode cache)."""


def assert_failed_call_left_nothing(kernel: Kernel, tensor_bytes_before: int) -> None:
    """Nothing is left referenced by a failed call: no live KV cache, no tensor bytes beyond
    those alive before it (and a decode cache kept on purpose), the model and `keep_me`
    intact, and the next call works."""
    leftovers = kernel.value(
        "sum(1 for o in __import__('gc').get_objects() if type(o).__name__ == 'DynamicCache')"
    )
    assert leftovers == 0
    left = kernel.value(UNKEPT_TENSOR_BYTES) - tensor_bytes_before
    assert left == 0, f"the failed call left {left:,} bytes of tensors alive"
    assert kernel.value("keep_me") == [41]
    assert kernel.run("%qwen3 --max-new-tokens 2 --no-think fine again").status == "ok"


def test_out_of_memory_is_caught_released_and_explained(kernel: Kernel) -> None:
    kernel.run("keep_me = [41]")
    ok(kernel, "%qwen3 --max-new-tokens 1 --no-think load")
    before = kernel.value(UNKEPT_TENSOR_BYTES)
    ex = kernel.run("%qwen3 --memory-budget 64KiB --no-think --ignore-eos --max-new-tokens 200 hi")
    assert ex.status == "error"
    message = ex.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert (
        "out of memory on cpu after" in message and "over the memory budget of 64.0 KiB" in message
    )
    assert "raise --memory-budget or lower --max-new-tokens" in message
    assert_failed_call_left_nothing(kernel, before)


def test_running_out_of_host_memory_is_the_same_one_line_out_of_memory(kernel: Kernel) -> None:
    """The CPU allocator's failure is a RuntimeError, not torch.OutOfMemoryError: a call that
    runs out of host memory still ends in one line, holding nothing, on either decode path."""
    kernel.run("keep_me = [41]")
    ok(kernel, "%qwen3 --max-new-tokens 2 --no-think load")
    ok(kernel, HOG_HOOK + "from qwen3_jupyter.session import SESSION as _s")
    ok(kernel, "hook = hog_above(_s.loaded.model, 0)")
    before = kernel.value(UNKEPT_TENSOR_BYTES)
    try:
        for path in ("--eager", "--fast"):
            ex = kernel.run(f"%qwen3 {path} --no-think --max-new-tokens 20 hi")
            assert ex.status == "error", path
            message = ex.stderr.strip()
            assert len(message.splitlines()) == 1, message
            assert message.startswith(
                "UsageError: out of memory on cpu after 0 new tokens (host memory: could not "
                "allocate 262144.0 TiB more); freed "
            ), message
            if path == "--eager":
                assert message.endswith("to see what holds memory"), message
            else:  # the fast path's cache has a fixed size: a shorter answer would not help
                assert "freed " in message and message.endswith(
                    ": decode with --eager (the fast path needs a 2.6 MiB decode cache for "
                    "1×4096 tokens; --eager's grows with the answer), or run %qwen3_clean "
                    "--verbose to see what else holds memory"
                ), message
    finally:
        ok(kernel, "hook.remove()")
    assert_failed_call_left_nothing(kernel, before)


HOLD_THEN_RUN_OUT = """
import gc, weakref
import torch
held_ref, alive_at_collections = None, []

def hold_then_run_out(module, args):
    global held_ref
    held = torch.ones(4 * 2**20)  # alive in this frame when the allocator fails, as a
    held_ref = weakref.ref(held)  # prefill's activations are
    torch.empty(BEYOND_ANY_HOST, dtype=torch.uint8)

def note_collection(phase, info):
    if phase == "start" and held_ref is not None:
        alive_at_collections.append(held_ref() is not None)
"""


def test_the_release_after_running_out_finds_the_failing_frames_gone(kernel: Kernel) -> None:
    """The release after a call ran out must come after the failing frames died: an exception
    still referenced (inside its except block, or as the context of the one raised there)
    keeps every frame's tensors alive, and on a GPU their blocks would stay reserved. Every
    collection during the call (automatic ones off) is watched for the frame's tensor."""
    ok(kernel, "keep_me = [41]")
    ok(kernel, "%qwen3 --max-new-tokens 2 --no-think load")
    ok(kernel, HOG_HOOK + HOLD_THEN_RUN_OUT + "from qwen3_jupyter.session import SESSION as _s")
    embed = "_s.loaded.model.model.embed_tokens"
    ok(kernel, f"hook = {embed}.register_forward_pre_hook(hold_then_run_out)")
    before = kernel.value(UNKEPT_TENSOR_BYTES)
    try:
        for path in ("--eager", "--fast"):
            ok(kernel, "alive_at_collections.clear(); held_ref = None")
            ok(kernel, "gc.disable(); gc.callbacks.append(note_collection)")
            try:
                ex = kernel.run(f"%qwen3 {path} --no-think --max-new-tokens 4 hi")
            finally:
                ok(kernel, "gc.callbacks.remove(note_collection); gc.enable()")
            assert "out of memory on cpu after 0 new tokens" in ex.stderr, (path, ex.stderr)
            seen = kernel.value("alive_at_collections")
            assert seen, f"{path}: the call released nothing (no collection ran)"
            assert not any(seen), f"{path}: the failing frame's tensor was alive at {seen}"
            assert kernel.value("held_ref() is None")
    finally:
        ok(kernel, "hook.remove()")
    assert_failed_call_left_nothing(kernel, before)


def test_a_meta_default_device_is_one_line_and_leaves_the_fast_path_on(kernel: Kernel) -> None:
    """`torch.set_default_device('meta')` (a model's skeleton built without memory): a load
    was blamed on a damaged model folder, a call showed the tokenizer's traceback, and a fast
    call turned the fast path off for the rest of the kernel."""
    ok(kernel, "import torch\ntorch.set_default_device('meta')")
    try:
        for cell in ("%qwen3 --fast --no-think --max-new-tokens 2 hi", "%qwen3 --eager hi"):
            said = kernel.run(cell).stderr.strip()
            assert said == (
                "UsageError: torch's default device is meta (torch.set_default_device('meta')), "
                "where no model loads or runs: torch.set_default_device(None) puts it back, then "
                "ask again"
            ), said
    finally:
        ok(kernel, "torch.set_default_device(None)")
    ex = ok(kernel, "%qwen3 --fast --greedy --no-think --max-new-tokens 2 hi")
    assert "(fast)" in ex.stdout, ex.stdout


def test_an_answer_longer_than_the_model_allows_is_one_line_at_once(kernel: Kernel) -> None:
    """A typo such as --max-new-tokens 99999999 must not run for hours: transformers' generate
    goes on past the model's positions, so both paths check before generating anything."""
    kernel.run("keep_me = [41]")
    for path in ("--eager", "--fast"):
        started = time.monotonic()
        ex = kernel.run(f"%qwen3 {path} --no-think --max-new-tokens 99999999 hi", timeout=60)
        assert ex.status == "error", path
        assert time.monotonic() - started < 10, path
        message = ex.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert re.fullmatch(
            r"UsageError: prompt \(\d+ tokens\) \+ --max-new-tokens 99,999,999 exceeds the 4,096 "
            r"positions of tiny: shorten it or lower --max-new-tokens",
            message,
        ), message
    # A prompt beyond them: transformers' own warning came first, naming the tokenizer's
    # 40,960 against the one-line error's 4,096. One far beyond them (a table put in whole) is
    # refused on its first part's count: tokenizing 48 MB took 35-50 s.
    ok(kernel, "long_text = 'word ' * 5_000; huge_text = 'word ' * 2_000_000")
    for path in ("--eager", "--fast"):
        ex = kernel.run(f"%qwen3 {path} --vars --no-think --max-new-tokens 3 {{long_text}}")
        said = (ex.stdout + ex.stderr).strip()
        assert said.startswith("UsageError: prompt (5,0") and len(said.splitlines()) == 1, said
        ex = kernel.run(f"%qwen3 {path} --vars --no-think --max-new-tokens 3 {{huge_text}}")
        said = (ex.stdout + ex.stderr).strip()
        assert re.fullmatch(
            r"UsageError: prompt \(at least \d,\d{3} tokens\) \+ --max-new-tokens 3 exceeds "
            r"the 4,096 positions of tiny: shorten it or lower --max-new-tokens",
            said,
        ), said
    ok(kernel, "%qwen3 --chat --no-think --max-new-tokens 4 hi")  # a conversation to shorten
    ex = kernel.run("%qwen3 --chat --no-think --max-new-tokens 4080 hi", timeout=60)
    assert "shorten it (--reset clears a --chat conversation)" in ex.stderr, ex.stderr
    ok(kernel, "%qwen3 --reset")
    assert kernel.value("keep_me") == [41]
    ok(kernel, "%qwen3 --max-new-tokens 2 --no-think still fine")


def test_a_model_too_large_to_load_is_one_line_and_loses_no_variables(
    kernel: Kernel, tmp_path: Path
) -> None:
    from qwen3_jupyter import embedded

    huge = checkpoint_too_large_for_any_host(embedded.ensure_built("tiny"), tmp_path / "huge")
    kernel.run("keep_me = [41]")
    ok(kernel, "%qwen3 --max-new-tokens 2 --no-think load")
    ex = kernel.run(f"%qwen3 --model {huge} --max-new-tokens 2 hi")
    assert ex.status == "error"
    # Before the error, transformers reports the weights this checkpoint lacks (on stderr).
    assert "Traceback" not in ex.stderr
    message = ex.stderr.strip().splitlines()[-1]
    assert message.startswith(f"UsageError: out of memory loading {huge} on cpu (host memory:")
    assert message.endswith("tiny was unloaded to make room for it (--model tiny loads it again)")
    assert kernel.value("keep_me") == [41]
    ok(kernel, "%qwen3 --model tiny --max-new-tokens 2 --no-think back again")


def test_unload_frees_the_model_and_proves_it(fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    k.run("%load_ext qwen3_jupyter")
    k.run("%qwen3 --max-new-tokens 2 hi")
    k.run("import weakref, qwen3_jupyter.session as s; ref = weakref.ref(s.SESSION.loaded.model)")
    ex = k.run("%qwen3 --unload")
    assert ex.status == "ok"
    assert "unloaded tiny · model object freed" in ex.stdout
    assert "freed" in ex.stdout
    assert k.value("ref() is None")
    assert k.value("s.SESSION.loaded is None")
    again = k.run("%qwen3 --unload")
    assert "nothing to unload" in again.stdout


def test_weights_a_variable_still_holds_are_named_by_the_unload_and_the_next_load(
    kernel: Kernel,
) -> None:
    """`w = <a weight>` kept 37.1 of tiny's 37.4 MiB while the unload said "model object
    freed"; `m = <the model>` made the next load a second copy beside it without a word."""
    ok(kernel, "import qwen3_jupyter.session as s")
    ok(kernel, "%qwen3 --model tiny --max-new-tokens 2 --no-think hi")
    ok(kernel, "w = s.SESSION.loaded.model.model.embed_tokens.weight")
    unloaded = ok(kernel, "%qwen3 --unload").stdout
    assert re.search(
        r"unloaded tiny · model object freed, but 37\.1 MiB of its weights still in memory, "
        r"held by w: del w frees it · ",
        unloaded,
    ), unloaded
    reloaded = ok(kernel, "%qwen3 --model tiny --max-new-tokens 2 --no-think hi").stdout
    assert "the tiny unloaded earlier is still in memory (37.1 MiB), held by w: del w" in reloaded
    ok(kernel, "del w\nm = s.SESSION.loaded.model")
    held = ok(kernel, "%qwen3 --unload").stdout
    assert "model object STILL held: 37.4 MiB of its weights still in memory, held by m" in held
    ok(kernel, "del m")
    assert "still in memory" not in ok(kernel, "%qwen3 --max-new-tokens 2 --no-think hi").stdout
    freed = ok(kernel, "%qwen3 --unload").stdout
    assert "unloaded tiny · model object freed · " in freed, freed


def test_model_from_config_option(fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    k.run("import os; os.environ.pop('QWEN3_JUPYTER_MODEL')\n%load_ext qwen3_jupyter")
    k.run("%config Qwen3Magics.model = 'random:tiny'")
    ex = k.run("%qwen3 --max-new-tokens 2 hi")
    assert ex.status == "ok", ex.stderr
    assert "[qwen3] random:tiny on cpu" in ex.stdout
