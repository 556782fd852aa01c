"""`with qwen3_jupyter.inference() as chat:` in a real kernel: it generates, and it cleans up on
exit even when the block raises (the exception still reaches the user)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel import WEAKREF_HELPERS, Kernel, ok

SETUP = (
    WEAKREF_HELPERS
    + """
import qwen3_jupyter
from qwen3_jupyter.session import SESSION
"""
)


@pytest.fixture(scope="module")
def k(kernel: Kernel) -> Iterator[Kernel]:
    ok(kernel, SETUP)
    yield kernel


def test_block_generates_and_reports_its_cleanup(k: Kernel) -> None:
    ok(k, 'shown = torch.ones(4 * MiB)\nrefs["out"] = weakref.ref(shown)\nshown')
    ok(k, "del shown")
    assert k.value('alive("out")'), "control: the output cache holds the tensor shown"
    ok(
        k,
        "with qwen3_jupyter.inference(\n"
        '    model="tiny", greedy=True, max_new_tokens=3, ignore_eos=True\n'
        ") as chat:\n"
        '    result = chat("hi")\n'
        '    longer = chat("hi", max_new_tokens=5)\n'
        '    refs["model"] = weakref.ref(SESSION.loaded.model)\n',
    )
    assert k.value("(type(result).__name__, result.completion_tokens)") == ("Result", 3)
    assert k.value("longer.completion_tokens") == 5, "a call's own max_new_tokens wins"
    assert not k.value('alive("out")'), "the block's cleanup did not clear the output cache"
    released = k.value("chat.report.released")
    assert any(name.startswith("Out[") for name in released), released
    assert k.value("alive('model') and SESSION.loaded is not None"), "the model stays loaded"
    closed = k.run('chat("again")')
    assert closed.status == "error" and "ended with its" in closed.reply["evalue"]


def test_block_that_raises_is_cleaned_and_the_error_propagates(k: Kernel) -> None:
    ok(
        k,
        "def work():\n"
        "    big = torch.ones(4 * MiB)\n"
        '    refs["inside"] = weakref.ref(big)\n'
        '    raise RuntimeError("out of memory (pretend)")\n'
        "caught = None\n"
        "try:\n"
        "    with qwen3_jupyter.inference(greedy=True, max_new_tokens=2) as chat:\n"
        '        chat("hi")\n'
        "        work()\n"
        "except RuntimeError as exc:\n"
        "    caught = str(exc)\n"
        '    freed_while_handling = not alive("inside")',
    )
    assert k.value("caught") == "out of memory (pretend)"
    assert k.value("freed_while_handling"), "the failed call's tensor outlived the block"
    assert k.value("type(chat.report).__name__") == "CleanupReport"


def test_uncaught_error_in_block_shows_and_is_freed(k: Kernel) -> None:
    failed = k.run(
        "with qwen3_jupyter.inference(greedy=True, max_new_tokens=2) as chat:\n    work()",
    )
    assert failed.status == "error" and failed.reply["ename"] == "RuntimeError"
    assert k.value('alive("inside")') is False


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (
            "qwen3_jupyter.inference(temprature=0.5).__enter__()",
            "unknown option temprature (did you mean temperature?)",
        ),
        (
            "with qwen3_jupyter.inference(model='tiny') as chat:\n    chat('hi', no_think=True)",
            "unknown option no_think (did you mean think=False?)",
        ),
        (
            "qwen3_jupyter.generate_batch(['a'], no_think=True)",
            "unknown option no_think (did you mean think=False?)",
        ),
        (
            "qwen3_jupyter.generate_batch(['a'], modle='tiny')",
            "unknown option modle (did you mean model?)",
        ),
        (  # a keyword Python itself refused, through the package's frames
            "qwen3_jupyter.cleanup(ful=True)",
            "unknown option ful (did you mean full?)",
        ),
        (  # taken as the cleanup's shell, it failed four frames down with an AttributeError
            "qwen3_jupyter.cleanup(True)",
            "cleanup() takes no value by position: name each one (drop=, dynamo=, verbose=, "
            "count_tensors=, full=, shell=, keep_last_error=)",
        ),
        (
            "with qwen3_jupyter.inference(model='tiny') as chat:\n    chat('hi', 'there')",
            "chat() takes only prompt by position: name the others (chat=, on_text=)",
        ),
    ],
)
def test_a_misspelt_keyword_is_one_clear_type_error_naming_the_right_one(
    k: Kernel, code: str, said: str
) -> None:
    """inference(), chat() and generate_batch word it the same way (generate_batch listed every
    field, with no suggestion)."""
    bad = k.run(code)
    assert bad.status == "error"
    assert bad.reply["ename"] == "TypeError"
    assert bad.reply["evalue"] == said


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _shown(execution: Any) -> list[str]:
    """The lines the cell showed for its error, colours taken out."""
    error = execution.error
    assert error is not None, execution.stderr
    return [line for line in ANSI.sub("", "\n".join(error["traceback"])).splitlines() if line]


@pytest.mark.parametrize(
    "code",
    [
        "qwen3_jupyter.generate_batch(['a'], max_new_token=5)",
        "qwen3_jupyter.generate_batch(['a'], model='tiny', device='gpu')",
        "with qwen3_jupyter.inference(model='tiny', decode='fastest') as chat:\n    pass",
        "with qwen3_jupyter.inference(model='tiny') as chat:\n    chat('hi', temperature=-1)",
        "qwen3_jupyter.cleanup(drop=['no_such_variable'])",
        "qwen3_jupyter.cleanup(ful=True)",
        "qwen3_jupyter.generate_batch(['a'], 2, 3)",
        "qwen3_jupyter.inference(model='tiny')('hi')",
        # a budget no batch fits: out of memory at batch size 1, its frames the package's own
        "qwen3_jupyter.generate_batch(['a', 'b'], model='tiny', memory_budget='1.5MiB', "
        "decode='fast', progress=False)",
    ],
)
def test_a_refused_argument_shows_the_callers_line_and_the_message(k: Kernel, code: str) -> None:
    """A typo in a Python call showed 29 lines of this package's checks above its one-line
    message (a bad device 77, with torch's own error chained): now the caller's line and the
    message, as a Python error of the caller's own would show."""
    shown = _shown(k.run(code))
    assert not any("qwen3_jupyter/" in line for line in shown), "\n".join(shown)
    arrows = [line for line in shown if line.startswith("---->")]
    assert len(arrows) == 1 and arrows[0].split(maxsplit=2)[2] in code, "\n".join(shown)
    assert len(shown) <= 6, "\n".join(shown)  # the header, the cell's lines, the message


def test_an_error_of_the_callers_own_code_keeps_its_whole_traceback(k: Kernel) -> None:
    """The control: an error raised in the caller's `on_text` is not a refusal of ours."""
    shown = _shown(
        k.run(
            "def on_text(text):\n    raise ZeroDivisionError('mine')\n"
            "with qwen3_jupyter.inference(model='tiny', max_new_tokens=3) as chat:\n"
            "    chat('hi', on_text=on_text)"
        )
    )
    assert shown[-1] == "ZeroDivisionError: mine"
    assert any("qwen3_jupyter/" in line for line in shown)


def test_a_bad_value_is_a_clear_value_error_before_any_model_loads(k: Kernel) -> None:
    ok(k, "%qwen3 --unload")
    bad = k.run("qwen3_jupyter.inference(model='tiny', temperature=-1).__enter__()")
    assert bad.status == "error"
    assert bad.reply["ename"] == "ValueError"
    assert bad.reply["evalue"].startswith("temperature=-1: must be > 0")
    assert k.value("SESSION.loaded is None"), "nothing was loaded for a call that cannot run"
    in_call = k.run(
        "with qwen3_jupyter.inference(model='tiny', max_new_tokens=2) as chat:\n"
        "    chat('hi', top_p=3)"
    )
    assert in_call.reply["ename"] == "ValueError"
    assert in_call.reply["evalue"] == "top_p=3: must be in (0, 1]"


def test_greedy_with_a_sampling_value_is_refused_before_any_model_loads(k: Kernel) -> None:
    """As `%qwen3 --greedy --temperature 0.3` is refused: before, the API silently dropped the
    sampling value."""
    ok(k, "%qwen3 --unload")
    for code, said in [
        (
            "qwen3_jupyter.generate_batch(['hi'], model='tiny', greedy=True, temperature=0.3, "
            "progress=False)",
            "temperature=0.3",
        ),
        ("qwen3_jupyter.inference(model='tiny', greedy=True, top_p=0.5).__enter__()", "top_p=0.5"),
    ]:
        bad = k.run(code)
        assert bad.status == "error" and bad.reply["ename"] == "ValueError", bad.reply
        assert bad.reply["evalue"] == (
            f"greedy=True always takes the likeliest token, so {said} would do nothing: "
            "drop one of them"
        )
        assert k.value("SESSION.loaded is None"), "nothing was loaded for a call that cannot run"
    # A call's own options win over its block's, conflicts included (a block's defaults must
    # stay changeable per call): the call's sampling value sets the block's greedy aside, and
    # the call's greedy=True sets the block's sampling values aside.
    ok(
        k,
        "with qwen3_jupyter.inference(model='tiny', greedy=True, max_new_tokens=2) as chat:\n"
        "    sampled = chat('hi', top_k=5, seed=1)\n"
        "with qwen3_jupyter.inference(model='tiny', temperature=0.7, max_new_tokens=2) as chat:\n"
        "    greedy = chat('hi', greedy=True)",
    )
    assert k.value("(sampled.completion_tokens, greedy.completion_tokens)") == (2, 2)


def test_a_prompt_that_is_not_text_is_one_clear_type_error(k: Kernel) -> None:
    """Before, None failed inside the chat template (jinja's UndefinedError) and a list with
    "can only concatenate str"; the chat stays usable."""
    for prompt, expected in (
        ("None", "the prompt is None (NoneType), not text"),
        ("['a', 'b']", "chat() answers one prompt: for a list use qwen3_jupyter.generate_batch"),
    ):
        bad = k.run(
            "with qwen3_jupyter.inference(model='tiny', max_new_tokens=2) as chat:\n"
            f"    chat({prompt})"
        )
        assert bad.reply["ename"] == "TypeError", bad.reply
        assert bad.reply["evalue"].startswith(expected), bad.reply["evalue"]
    ok(
        k,
        "with qwen3_jupyter.inference(model='tiny', max_new_tokens=2) as chat:\n"
        "    assert chat('hi', ignore_eos=True).completion_tokens == 2",
    )


def test_calling_inference_like_chat_is_one_line_pointing_to_the_block(k: Kernel) -> None:
    """Before, `inference(...)("hi")` used the block as a decorator: it returned a function
    and did nothing."""
    bad = k.run('qwen3_jupyter.inference(model="tiny")("hi")')
    assert bad.status == "error"
    assert bad.reply["ename"] == "TypeError"
    assert bad.reply["evalue"] == (
        "inference() opens a block, it does not answer: with qwen3_jupyter.inference(...) as "
        'chat: chat("hi")'
    )


def test_a_prompt_given_to_inference_is_one_line_not_a_silent_block(k: Kernel) -> None:
    """`inference("Why is the sky blue?")` made a block that was never entered: the question
    went nowhere and the cell showed `<...InferenceBlock object at 0x...>`. A folder with a
    space in its name is still a model."""
    bad = k.run('qwen3_jupyter.inference("Why is the sky blue?")')
    assert bad.status == "error" and bad.reply["ename"] == "ValueError"
    assert bad.reply["evalue"] == (
        "inference() takes a model, not a prompt ('Why is the sky blue?'): it opens a block, "
        "with qwen3_jupyter.inference() as chat: chat('Why is the sky blue?') (or %qwen3 Why is "
        "the sky blue?)"
    )
    shown = ok(k, 'qwen3_jupyter.inference(model="tiny")').result()
    assert shown == '<qwen3 inference block: with qwen3_jupyter.inference(...) as chat: chat("hi")>'
    ok(k, "import tempfile, pathlib\nfolder = pathlib.Path(tempfile.mkdtemp(), 'my models')")
    ok(k, "folder.mkdir()\nblock = qwen3_jupyter.inference(str(folder))")  # refused on entry
    entered = k.run("with block as chat:\n    pass")
    assert entered.status == "error" and "my models" in entered.reply["evalue"], entered.reply


@pytest.mark.parametrize(
    ("code", "said"),
    [
        ("qwen3_jupyter.inference(device='gpu').__enter__()", r"device='gpu' is not a device "),
        ("qwen3_jupyter.inference(dtype='fp8').__enter__()", r"dtype='fp8' is not one of "),
        (
            "qwen3_jupyter.inference(model='tiny', device='mps').__enter__()",
            r"device='mps': no mps device here; use device='cpu'$",
        ),
        (
            "with qwen3_jupyter.inference(model='tiny') as chat:\n"
            "    chat('hi', max_new_tokens=99999999)",
            r"prompt \(\d+ tokens\) \+ max_new_tokens=99,999,999 exceeds the 4,096 positions of "
            r"tiny: shorten it or lower max_new_tokens",
        ),
        (
            "qwen3_jupyter.generate_batch(['hi'], model='tiny', memory_budget=1000, "
            "max_new_tokens=50, progress=False)",
            r"out of memory even at batch size 1 .*: raise memory_budget or lower max_new_tokens",
        ),
    ],
)
def test_api_errors_name_the_arguments_the_caller_typed(k: Kernel, code: str, said: str) -> None:
    """Before, they named the magic's flags (`--device 'gpu'`, `--max-new-tokens`), which a
    Python caller never typed."""
    bad = k.run(code)
    assert bad.status == "error"
    assert re.match(said, bad.reply["evalue"]), bad.reply["evalue"]
    assert "--" not in bad.reply["evalue"], bad.reply["evalue"]


@pytest.mark.parametrize(
    ("magic", "api"),
    [
        (
            "--device mps: no mps device here; use --device cpu",
            "device='mps': no mps device here; use device='cpu'",
        ),
        ("pick a smaller --dtype or --device cpu", "pick a smaller dtype or device='cpu'"),
        ("run in --dtype bfloat16.", "run in dtype='bfloat16'."),
        (
            "try the embedded model with --model tiny (or random:Qwen3-1.7B)",
            "try the embedded model with model='tiny' (or random:Qwen3-1.7B)",
        ),
        ("(--model Qwen/Qwen3-1.7B loads it again)", "(model='Qwen/Qwen3-1.7B' loads it again)"),
        ("--model then names the served model", "model then names the served model"),
        ("pass --model NAME, or leave --model out", "pass model NAME, or leave model out"),
        ("pass --model 'qwen3-8b', or leave --model", "pass model='qwen3-8b', or leave model"),
        ("--max-new-tokens leaves no room", "max_new_tokens leaves no room"),
        ("--max-new-tokens 4,096 leaves no room", "max_new_tokens=4,096 leaves no room"),
        ("--device 'gpu' is not a device", "device='gpu' is not a device"),
        ("--model /data/m.bin: a file", "model='/data/m.bin': a file"),
    ],
)
def test_a_flags_value_is_an_argument_only_where_it_is_one(magic: str, api: str) -> None:
    """`device='mps'` from Python was told `ModelError: device mps: no mps device here; use
    device cpu`: a bare word after a flag was always the sentence's, even a device or dtype
    only a value can be."""
    from qwen3_jupyter.python_words import in_python_words

    assert in_python_words(magic) == api


def test_an_api_calls_notices_name_the_arguments_too(k: Kernel) -> None:
    """Only errors were reworded: a chat turn with no answer told a Python caller to "raise
    --max-new-tokens, or --no-think"."""
    said = ok(
        k,
        "with qwen3_jupyter.inference(model='tiny') as chat:\n"
        "    chat('hi', chat=True, max_new_tokens=3, think=True, greedy=True)",
    ).stdout
    assert "this chat turn has no answer (raise max_new_tokens, or think=False)" in said, said


def test_the_callers_own_error_keeps_its_words(k: Kernel) -> None:
    """Only the package's errors are reworded in argument names: an `on_text` that raised
    `bad --seed 5 in /data/run--model/x` reached its caller as `bad seed=5 in /data/runmodel/x`."""
    said = "bad --seed 5 in /data/run--model/x and --device 'cuda:1'"
    bad = k.run(
        f"def cb(text):\n    raise ValueError({said!r})\n"
        "with qwen3_jupyter.inference(model='tiny', max_new_tokens=4) as chat:\n"
        "    chat('hi', on_text=cb)"
    )
    assert (bad.reply["ename"], bad.reply["evalue"]) == ("ValueError", said)


def test_an_empty_prompt_is_refused_in_one_line(k: Kernel) -> None:
    """Before, chat("") generated a full 512-token answer to nothing."""
    for prompt in ("''", "'  \\n'"):
        bad = k.run(
            "with qwen3_jupyter.inference(model='tiny', max_new_tokens=2) as chat:\n"
            f"    chat({prompt})"
        )
        assert bad.reply["ename"] == "ValueError", bad.reply
        assert bad.reply["evalue"].startswith("the prompt is empty ("), bad.reply["evalue"]
        assert len(bad.stderr.strip().splitlines()) <= 1


@pytest.mark.parametrize(
    ("arguments", "error", "said"),
    [
        ({"max_new_tokens": "5"}, TypeError, "max_new_tokens='5' (str): must be a whole number"),
        ({"max_new_tokens": True}, TypeError, "max_new_tokens=True (bool): must be a whole"),
        ({"temperature": "hot"}, TypeError, "temperature='hot' (str): must be a number"),
        ({"seed": 10**30}, ValueError, f"seed={10**30}: must be from 0 to 2**63-1"),
        ({"model": 123}, TypeError, "model=123 (int): must be text or None"),
        ({"device": 0}, TypeError, "device=0 (int): must be text or None"),
        ({"server": b"http://x"}, TypeError, "server=b'http://x' (bytes): must be text"),
        ({"verbose": "yes"}, TypeError, "verbose='yes' (str): must be True or False"),
    ],
)
def test_inference_refuses_a_wrong_argument_in_one_line_before_any_model(
    arguments: dict, error: type[Exception], said: str
) -> None:
    """In process: the check comes before the session is asked for a model (model=123 was an
    AttributeError from `.lower()` inside the model lookup)."""
    from qwen3_jupyter import inference
    from qwen3_jupyter.session import SESSION

    loaded = SESSION.loaded
    with pytest.raises(error) as info:
        inference(**arguments).__enter__()
    assert str(info.value).startswith(said), str(info.value)
    assert SESSION.loaded is loaded, "nothing was loaded for a call that cannot run"


class _NoEngine:
    """Stands for an engine that must not be reached: every check comes before it."""

    model_name = "none"

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the engine was used ({name}) for a call that cannot run")


@pytest.mark.parametrize(
    ("options", "error", "said"),
    [
        ({"system": 5}, TypeError, "system=5 (int): must be text or None"),
        ({"think": "no"}, TypeError, "think='no' (str): must be True or False"),
        ({"seed": 10**30}, ValueError, f"seed={10**30}: must be from 0 to 2**63-1"),
        ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens=2.5 (float): must be a whole"),
        ({"chat": "yes"}, TypeError, "chat='yes' (str): must be True or False"),
        ({"on_text": "print"}, TypeError, "on_text='print': must be a function"),
    ],
)
def test_a_chat_call_refuses_a_wrong_option_before_the_engine(
    options: dict, error: type[Exception], said: str
) -> None:
    from qwen3_jupyter.inference import Chat

    chat = Chat(_NoEngine(), {})  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        chat("hi", **options)
    assert str(info.value).startswith(said), str(info.value)


def test_unload_from_python_frees_the_model_and_proves_it(k: Kernel) -> None:
    """`qwen3_jupyter.unload()` is `%qwen3 --unload` for a script: before it, a Python caller
    had no public way to free the model, and the load notice pointed it to a magic."""
    ok(k, "qwen3_jupyter.unload()")  # whatever earlier tests loaded: the next call loads
    said = ok(
        k,
        "r = qwen3_jupyter.generate_batch(['hi'], model='tiny', max_new_tokens=2, progress=False)"
        "\nrefs['unloaded'] = weakref.ref(SESSION.loaded.model)",
    ).stdout
    assert "kept until qwen3_jupyter.unload()" in said, said
    assert k.value('alive("unloaded")'), "control: the session holds the model"
    ok(k, "report = qwen3_jupyter.unload()")
    assert not k.value('alive("unloaded")'), "the model object outlived unload()"
    assert k.value("(report.name, report.model_freed, SESSION.loaded)") == ("tiny", True, None)
    assert k.value("report.before > report.after"), "its memory was not given back"
    shown = ok(k, "report").result()
    assert (shown or "").startswith("UnloadReport: unloaded tiny · model object freed · "), shown
    assert k.value("str(report) == report.summary"), "print(unload()) in a script: the line"
    again = ok(k, "qwen3_jupyter.unload()").result()
    assert again == "UnloadReport: no model loaded in this kernel: nothing to unload", again


def test_an_api_call_is_told_when_the_template_decides_thinking(k: Kernel) -> None:
    """Only the magic said it: think=False to a Thinking-2507 model got a thought and no word
    why, from generate_batch and from a chat."""
    from tests.test_magics import TEMPLATES

    batch = (
        "qwen3_jupyter.generate_batch(['hi'], model='tiny', think={}, max_new_tokens=2, "
        "progress=False)"
    )
    ok(k, batch.format(True) + "\nSESSION.told_thinking.clear()")  # said by an earlier test?
    ok(k, TEMPLATES)
    try:
        ok(k, "tok.chat_template = thinking")
        said = ok(k, batch.format(False)).stdout
        assert "tiny always thinks (its chat template opens <think>): think=False has no " in said
        assert "always thinks" not in ok(k, batch.format(False)).stdout, "said once"
        ok(k, "tok.chat_template = instruct")
        said = ok(
            k,
            "with qwen3_jupyter.inference(model='tiny', max_new_tokens=2) as chat:\n    chat('hi')",
        ).stdout
        assert "tiny does not think (its chat template has no thinking switch)" in said, said
    finally:
        ok(k, "tok.chat_template = hybrid")


def test_reset_chat_clears_the_conversation_chat_true_builds(k: Kernel) -> None:
    """`chat(..., chat=True)` added to the kernel's conversation and only `%qwen3 --reset`
    cleared it; the positions-limit error told a Python caller to use `--reset`."""
    ok(k, "qwen3_jupyter.reset_chat()")
    ok(
        k,
        "with qwen3_jupyter.inference(model='tiny', think=False, seed=4, max_new_tokens=6)"
        " as chat:\n"
        "    chat('hi', chat=True, system='Be a pirate')\n"
        "    chat('again', chat=True)\n"
        "    alone = chat('hi').prompt_tokens\n"
        "    too_long = None\n"
        "    try:\n"
        "        chat('more', chat=True, max_new_tokens=4080)\n"
        "    except Exception as exc:\n"
        "        too_long = str(exc)",
    )
    assert k.value("(len(SESSION.conversation.messages), SESSION.conversation.system)") == (
        4,
        "Be a pirate",
    )
    message = k.value("too_long")
    assert "shorten it (qwen3_jupyter.reset_chat() clears a chat=True conversation)" in message
    assert "--" not in message, message
    assert k.value("qwen3_jupyter.reset_chat()") == "conversation cleared (2 turns)"
    assert k.value("(SESSION.conversation.messages, SESSION.conversation.system)") == ([], None)
    assert k.value("qwen3_jupyter.reset_chat()") == "conversation cleared (it was empty)"
    shown = ok(k, "qwen3_jupyter.reset_chat()").result()
    assert shown == "conversation cleared (it was empty)", "a cell shows the line, unquoted"
    assert "reset_chat" in k.value("qwen3_jupyter.__all__")
    ok(
        k,
        "with qwen3_jupyter.inference(model='tiny', think=False, seed=4, max_new_tokens=6)"
        " as chat:\n"
        "    fresh = chat('hi', chat=True).prompt_tokens",
    )
    assert k.value("fresh == alone"), "the next chat=True turn starts a new conversation"
    ok(k, "qwen3_jupyter.reset_chat()")


def test_an_empty_system_clears_the_chats_system_prompt(k: Kernel) -> None:
    """`system=""` on a chat=True turn kept the conversation's persona (`options.system or
    self.system`): an empty one now clears it, as a new one replaces it."""
    ok(k, "qwen3_jupyter.reset_chat()")
    ok(
        k,
        "with qwen3_jupyter.inference(model='tiny', think=False, seed=4, max_new_tokens=6)"
        " as chat:\n"
        "    chat('hi', chat=True, system='Be a pirate')\n"
        "    chat('again', chat=True, system='')\n"
        "    after = chat('more', chat=True)",
    )
    assert k.value("SESSION.conversation.system") is None
    expected = k.value(
        "len(SESSION.loaded.tokenizer(SESSION.loaded.tokenizer.apply_chat_template("
        "[*SESSION.conversation.messages[:4], {'role': 'user', 'content': 'more'}], "
        "add_generation_prompt=True, enable_thinking=False, tokenize=False))['input_ids'])"
    )
    assert k.value("after.prompt_tokens") == expected, "the persona came back on turn 3"
    ok(k, "qwen3_jupyter.reset_chat()")


def test_an_empty_server_argument_uses_the_model_in_this_kernel(k: Kernel) -> None:
    """With `%config Qwen3Magics.server` set, `server=""` asked that server all the same (an
    empty value fell through to the config): it now means this kernel's model, as
    `--server ""` does."""
    ok(k, "%config Qwen3Magics.server = 'http://127.0.0.1:9/v1'")
    try:
        refused = k.run(
            "qwen3_jupyter.generate_batch(['hi'], model='tiny', max_new_tokens=2, progress=False)"
        )
        assert refused.status == "error", "control: the configured server is used"
        ok(
            k,
            "batch = qwen3_jupyter.generate_batch(['hi'], model='tiny', server='', "
            "max_new_tokens=2, progress=False)\n"
            "with qwen3_jupyter.inference(model='tiny', server='') as chat:\n"
            "    one = chat('hi', max_new_tokens=2)",
        )
        assert k.value("(batch[0].model, one.model)") == ("tiny", "tiny")
    finally:
        ok(k, "%config Qwen3Magics.server = ''")


BLOCK_NEVER_EXITED = """
import qwen3_jupyter
block = qwen3_jupyter.inference(model="tiny", max_new_tokens=2)
chat = block.__enter__()
print(chat("hi").completion_tokens)
"""


@pytest.mark.parametrize("how", ["script", "repl"])
def test_a_block_never_exited_ends_the_interpreter_quietly(model_cache: Path, how: str) -> None:
    """A `with inference()` block entered by hand and left open: at exit its cleanup ran while
    Python was shutting down and printed "Exception ignored in: <generator object _block ...>
    ImportError: sys.meta_path is None" (`python -i`; a script's said "import ... halted")."""
    import subprocess
    import sys

    command = [sys.executable, "-c", BLOCK_NEVER_EXITED]
    if how == "repl":
        command = [sys.executable, "-i", "-q"]
    ran = subprocess.run(
        command,
        input=BLOCK_NEVER_EXITED if how == "repl" else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "2" in ran.stdout.splitlines(), ran.stdout  # the chat answered: the block was open
    assert "Exception ignored" not in ran.stderr and "Error" not in ran.stderr, ran.stderr
