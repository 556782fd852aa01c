"""Generation without a kernel: thinking split, sampling defaults, messages, seeded runs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from qwen3_jupyter.display import footer
from qwen3_jupyter.engines.eager import EagerEngine
from qwen3_jupyter.generation import GenerationOptions, Result, build_messages, split_thinking
from tests.kernel import Kernel, ok


@pytest.mark.parametrize(
    ("text", "think", "expected"),
    [
        ("<think>\nstep 1\n</think>\n\nThe answer.", True, ("step 1", "The answer.", True)),
        ("step 1\n</think>\n\nThe answer.", True, ("step 1", "The answer.", True)),
        ("still thinking", True, ("still thinking", "", False)),
        ("<think>\n\n</think>\n\nDirect.", True, ("", "Direct.", True)),
        ("Plain answer", False, ("", "Plain answer", True)),
        ("a </think> b </think> c", True, ("a", "b </think> c", True)),
    ],
)
def test_split_thinking(text: str, think: bool, expected: tuple[str, str, bool]) -> None:
    assert split_thinking(text, think) == expected


def test_sampling_defaults_follow_qwen3_recommendations() -> None:
    assert GenerationOptions(think=True).sampling() == {
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
    }
    assert GenerationOptions(think=False).sampling() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
    }
    assert GenerationOptions(think=False, temperature=1.1, top_k=5).sampling()["temperature"] == 1.1
    assert GenerationOptions(greedy=True).sampling() == {"do_sample": False}


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            {"temperature": -1},
            "temperature=-1: must be > 0 and finite (greedy=True decodes deterministically)",
        ),
        ({"temperature": 0.0}, "temperature=0.0: must be > 0"),
        ({"top_p": 1.5}, "top_p=1.5: must be in (0, 1]"),
        ({"top_p": 0}, "top_p=0: must be in (0, 1]"),
        ({"top_k": 0}, "top_k=0: must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens=0: must be >= 1"),
        ({"seed": 10**30}, f"seed={10**30}: must be from 0 to 2**63-1"),
        ({"seed": 2**63}, f"seed={2**63}: must be from 0 to 2**63-1"),
        ({"seed": -1}, "seed=-1: must be from 0 to 2**63-1"),
        ({"temperature": float("nan")}, "temperature=nan: must be > 0"),
        # inf divides every logit to 0: sampling uniformly over top-k, never what was meant
        ({"temperature": float("inf")}, "temperature=inf: must be > 0 and finite"),
    ],
)
def test_values_no_decoder_can_use_are_refused_in_words(options: dict, said: str) -> None:
    """The Python API (inference(), generate_batch) gets what the magic's flags get: the value
    and the rule, before a model is touched, not transformers' error from inside generate."""
    with pytest.raises(ValueError) as info:
        GenerationOptions(**options)
    assert str(info.value).startswith(said)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            {"greedy": True, "temperature": 0.3},
            "greedy=True always takes the likeliest token, so temperature=0.3 would do nothing: "
            "drop one of them",
        ),
        (
            {"greedy": True, "top_p": 0.5, "top_k": 5},
            "greedy=True always takes the likeliest token, so top_p=0.5 and top_k=5 would do "
            "nothing: drop one of them",
        ),
    ],
)
def test_greedy_with_a_sampling_value_is_refused_as_the_magic_refuses_it(
    options: dict, said: str
) -> None:
    """`%qwen3 --greedy --temperature 0.3` was refused while the same options from Python were
    taken, the sampling value silently ignored."""
    with pytest.raises(ValueError) as info:
        GenerationOptions(**options)
    assert str(info.value) == said
    assert GenerationOptions(greedy=True).sampling() == {"do_sample": False}


def test_the_largest_seed_torch_takes_is_accepted() -> None:
    import torch

    options = GenerationOptions(seed=2**63 - 1)
    torch.manual_seed(options.seed)  # what the engines do with it: no overflow
    assert GenerationOptions(seed=0).seed == 0


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"max_new_tokens": "5"}, "max_new_tokens='5' (str): must be a whole number"),
        ({"max_new_tokens": True}, "max_new_tokens=True (bool): must be a whole number"),
        ({"max_new_tokens": 2.0}, "max_new_tokens=2.0 (float): must be a whole number"),
        ({"max_new_tokens": None}, "max_new_tokens=None (NoneType): must be a whole number"),
        ({"temperature": "hot"}, "temperature='hot' (str): must be a number or None"),
        ({"top_p": "0.9"}, "top_p='0.9' (str): must be a number or None"),
        ({"top_k": 2.5}, "top_k=2.5 (float): must be a whole number or None"),
        ({"seed": "1"}, "seed='1' (str): must be a whole number or None"),
        ({"seed": False}, "seed=False (bool): must be a whole number or None"),
        ({"system": 5}, "system=5 (int): must be text or None"),
        ({"think": "no"}, "think='no' (str): must be True or False"),
        ({"greedy": 1}, "greedy=1 (int): must be True or False"),
        ({"ignore_eos": None}, "ignore_eos=None (NoneType): must be True or False"),
    ],
)
def test_values_of_the_wrong_type_are_one_line_type_errors(options: dict, said: str) -> None:
    """A comparison failed deep inside ('>=' not supported between 'str' and 'int'), a str
    system prompt reached the chat template, and think='no' was taken as yes."""
    with pytest.raises(TypeError) as info:
        GenerationOptions(**options)
    assert str(info.value) == said


def test_numpy_numbers_are_accepted_as_plain_values() -> None:
    """A seed or budget from a numpy array is a number; a server's JSON needs a plain one."""
    import numpy as np

    options = GenerationOptions(
        max_new_tokens=np.int64(5),  # type: ignore[arg-type]
        seed=np.int32(3),  # type: ignore[arg-type]
        top_p=np.float32(0.5),  # type: ignore[arg-type]
    )
    assert (type(options.max_new_tokens), type(options.seed), type(options.top_p)) == (
        int,
        int,
        float,
    )
    assert (options.max_new_tokens, options.seed, options.top_p) == (5, 3, 0.5)
    # a DataFrame row's flag: refused as "think=np.False_ (bool): must be True or False"
    flags = GenerationOptions(think=np.False_, greedy=np.bool_(True))  # type: ignore[arg-type]
    assert (flags.think, flags.greedy) == (False, True)
    assert (type(flags.think), type(flags.greedy)) == (bool, bool)
    from qwen3_jupyter.generation import check_arguments

    check_arguments(flags={"progress": np.True_})
    with pytest.raises(TypeError, match="must be True or False"):
        check_arguments(flags={"progress": np.int64(1)})


def test_a_seed_too_large_for_torch_is_a_one_line_usage_error(kernel: Kernel) -> None:
    """It was a 112-line 'Overflow when unpacking long long' from torch.manual_seed."""
    ok(kernel, "x = 42")
    bad = kernel.run("%qwen3 --seed 99999999999999999999999 --max-new-tokens 3 hi")
    assert bad.reply["ename"] == "UsageError", bad.reply
    assert bad.reply["evalue"] == "--seed must be from 0 to 2**63-1"
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert kernel.value("x") == 42


def test_a_seeded_call_leaves_the_notebooks_random_state_as_it_was(kernel: Kernel) -> None:
    """`--seed` seeded torch globally: after one seeded call, `torch.rand` gave the same
    numbers whatever the notebook had seeded. Now it goes on from where the notebook was,
    the seeded answer still repeats, and an unseeded call draws from the notebook's stream."""
    ok(kernel, "import torch, qwen3_jupyter")
    calls = {
        "magic eager": "%qwen3 --model tiny --eager --seed 5 --no-think --max-new-tokens 4 hi",
        "magic fast": "%qwen3 --model tiny --fast --seed 5 --no-think --max-new-tokens 4 hi",
        "batch": "qwen3_jupyter.generate_batch(['a', 'b'], batch_size=1, model='tiny', "
        "seed=5, think=False, max_new_tokens=4, progress=False)",
        "batch fast": "qwen3_jupyter.generate_batch(['a', 'b'], batch_size=1, model='tiny', "
        "seed=5, think=False, max_new_tokens=4, progress=False, decode='fast')",
    }
    for name, call in calls.items():
        ok(kernel, f"torch.manual_seed(0)\n{call}\nafter_call = torch.rand(3).tolist()")
        ok(kernel, "torch.manual_seed(0); unseeded = torch.rand(3).tolist()")
        assert kernel.value("after_call == unseeded"), name
    ok(kernel, calls["magic eager"])
    ok(kernel, "first = _qwen3.token_ids")
    ok(kernel, "torch.manual_seed(1)")
    ok(kernel, calls["magic eager"])
    assert kernel.value("_qwen3.token_ids == first")


def test_messages_put_system_first_and_keep_history() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    messages = build_messages("c", GenerationOptions(system="sys"), history)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "c"


def test_generate_is_deterministic_for_a_seed_and_frees_tensors(model_cache: Path) -> None:
    import dataclasses
    import gc

    from qwen3_jupyter.memory import live_tensor_bytes
    from qwen3_jupyter.models import ModelChoice, ModelHolder

    holder = ModelHolder()
    loaded = holder.get(ModelChoice("tiny", "cpu", "float32"))
    options = GenerationOptions(think=False, max_new_tokens=12, seed=11, ignore_eos=True)
    engine = EagerEngine(loaded)
    gc.collect()
    before = live_tensor_bytes().get("cpu", 0)  # the weights (and whatever the session holds)
    first = engine.generate("Hi", options)
    second = engine.generate("Hi", options)
    gc.collect()
    left = live_tensor_bytes().get("cpu", 0) - before
    assert left == 0, f"two calls left {left:,} bytes of tensors alive (KV cache, logits)"
    assert first.answer == second.answer and first.completion_tokens == 12
    assert first.token_ids == second.token_ids and len(first.token_ids) == 12
    assert all(isinstance(t, int) for t in first.token_ids)
    assert first.time_to_first_token_s is not None and first.time_to_first_token_s > 0
    assert first.stop_reason == "length"
    values = dataclasses.asdict(first).values()
    plain = (str, int, float, bool, type(None))
    assert all(
        isinstance(v, plain) or (isinstance(v, tuple) and all(isinstance(i, int) for i in v))
        for v in values
    )
    assert holder.unload()


def test_the_position_limit_follows_a_rope_scaling_the_user_configured() -> None:
    """Qwen3's model card extends the context with YaRN (factor 4 over 32,768 positions) and
    leaves max_position_embeddings at 40,960: the length check must allow 131,072 then."""
    from transformers import Qwen3Config

    from qwen3_jupyter.engines.local import position_limit

    assert position_limit(Qwen3Config(max_position_embeddings=40960)) == 40960
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert position_limit(Qwen3Config(max_position_embeddings=40960, rope_scaling=yarn)) == 131072
    assert position_limit(None) == 0, "unknown: no check"


def test_untagged_text_the_model_ended_itself_is_its_answer() -> None:
    """A model that does not think (Qwen3-4B-Instruct-2507) answers with thinking "on" and no
    tags: its whole answer was filed as thinking not finished, and no answer shown."""
    from qwen3_jupyter.generation import split_completion

    assert split_completion("Blue.", True, "eos") == ("", "Blue.", True)
    assert split_completion("Blue, because", True, "length") == ("Blue, because", "", False)
    assert split_completion("<think>Hmm</think>Blue.", True, "eos") == ("Hmm", "Blue.", True)
    assert split_completion("<think>Hmm, the sky", True, "eos") == ("Hmm, the sky", "", False)
    assert split_completion("Hmm</think>Blue.", True, "eos") == ("Hmm", "Blue.", True)
    assert split_completion("Blue.", False, "length") == ("", "Blue.", True)


def _result(**changes: object) -> Result:
    base = Result(
        prompt="hi",
        answer="partial",
        thinking="",
        model="tiny",
        device="cpu",
        think=False,
        prompt_tokens=9,
        completion_tokens=8,
        latency_s=0.05,
        tokens_per_s=160.0,
        peak_memory_bytes=635 * 2**20,
        memory_kind="host RSS",
        stop_reason="interrupted",
        thinking_finished=True,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_an_interrupted_calls_footer_names_its_memory_once() -> None:
    """An interrupted call frees nothing measured (memory_freed_bytes None): its footer read
    'peak 635.0 MiB host RSS · host RSS · interrupted'."""
    pieces = footer(_result()).split(" · ")
    assert pieces[-2:] == ["peak 635.0 MiB host RSS", "interrupted: partial answer kept"]
    assert sum("host RSS" in piece for piece in pieces) == 1
    finished = footer(_result(stop_reason="eos", memory_freed_bytes=2**20)).split(" · ")
    assert finished[-2:] == ["peak 635.0 MiB host RSS", "freed 1.0 MiB"]


def test_a_server_calls_footer_still_says_where_its_memory_is() -> None:
    served = _result(peak_memory_bytes=None, memory_kind="model memory lives on the server")
    assert footer(served).split(" · ")[-2:] == [
        "model memory lives on the server",
        "interrupted: partial answer kept",
    ]


def test_a_call_interrupted_before_its_first_token_does_not_claim_a_partial_answer() -> None:
    """A server call interrupted while waiting for its first token (or a retry) printed
    "(empty answer) … interrupted: partial answer kept", of an answer that never began."""
    waiting = _result(completion_tokens=0, answer="")
    assert footer(waiting).split(" · ")[-1] == "interrupted before the first token"
    assert footer(_result()).split(" · ")[-1] == "interrupted: partial answer kept"  # control


def test_a_server_that_sent_no_usage_has_no_prompt_count_in_the_footer() -> None:
    """It read "16 tokens (0 prompt)" after an interrupt or from a server sending no usage."""
    served = _result(engine="remote", prompt_tokens=0, peak_memory_bytes=None)
    assert footer(served).split(" · ")[1] == "8 tokens"
    assert footer(_result(engine="remote")).split(" · ")[1] == "8 tokens (9 prompt)"
    assert footer(_result(prompt_tokens=0)).split(" · ")[1] == "8 tokens (0 prompt)"  # local


def test_a_call_interrupted_while_thinking_says_it_kept_the_thinking() -> None:
    """Its footer said "partial answer kept" under "No answer: stopped while thinking"."""
    thought = _result(answer="", thinking="Let me see", think=True, thinking_finished=False)
    assert footer(thought).split(" · ")[-1] == "interrupted: partial thinking kept"
    both = _result(thinking="Let me see", think=True)
    assert footer(both).split(" · ")[-1] == "interrupted: partial answer kept"


def test_only_a_spent_budget_is_told_to_raise_max_new_tokens() -> None:
    """A call that stopped while thinking said "the token budget ran out... Raise
    --max-new-tokens" whatever stopped it: an interrupt after 15 of 4,000 tokens, or a server."""
    from qwen3_jupyter.display import render

    def final(stop: str) -> str:
        return render("Hmm", "", False, hide_thinking=False, streaming=False, stop_reason=stop)[0]

    assert "Raise `--max-new-tokens`" in final("length")
    for stop in ("interrupted", "eos", "context", "abort"):
        assert "--max-new-tokens" not in final(stop), stop
    assert "stopped while thinking" in final("interrupted")
    unfinished = _result(think=True, thinking="Hmm", thinking_finished=False)
    assert "--max-new-tokens" not in footer(dataclasses.replace(unfinished, stop_reason="eos"))
    assert "thinking not finished (raise --max-new-tokens)" in footer(
        dataclasses.replace(unfinished, stop_reason="length")
    )


def test_an_answer_cut_off_by_the_budget_says_so() -> None:
    """A mid-sentence answer at --max-new-tokens looked finished: nothing said it was cut."""
    cut = footer(_result(stop_reason="length", answer="The three reasons are: first, the"))
    assert cut.endswith("answer cut off at --max-new-tokens (raise it for the rest)")
    assert "cut off" not in footer(_result(stop_reason="eos", answer="Done."))


def test_dollars_in_the_thinking_are_shown_as_typed_and_its_math_kept() -> None:
    """The thinking goes into raw HTML (its blockquote), where one backslash keeps a `$` from
    MathJax: a price in the thinking was typeset as italics, finished and streaming alike."""
    from qwen3_jupyter.display import render

    thought = "The hotel is $120 a night and the taxi $35; let $x^2$ be the rest."
    expected = "The hotel is \\$120 a night and the taxi \\$35; let $x^2$ be the rest."
    done = render(thought, "About $155.", True, False, streaming=False)[0]
    assert f"<blockquote>{expected}</blockquote>" in done, done
    assert done.endswith("About \\\\$155."), "the answer's Markdown takes two"
    live = render(thought, "", False, False, streaming=True)[0]
    assert f"<blockquote>{expected}</blockquote>" in live, live


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        ("Wrap it in a <div> tag", "Wrap it in a &lt;div> tag"),
        ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)>"),
        ("inline `<div>` stays", "inline <code>&lt;div&gt;</code> stays"),
        ("inline `a < b` too", "inline <code>a &lt; b</code> too"),
        ("inline `div` stays", "inline `div` stays"),
        (
            "```html\n<p>x</p>\n```\nthen <b>",
            '<pre><code class="language-html">&lt;p&gt;x&lt;/p&gt;\n</code></pre>\nthen &lt;b>',
        ),
        ("```py\nprint(1)\n```\nthen <b>", "```py\nprint(1)\n```\nthen &lt;b>"),
        ("> a quote & more", "> a quote & more"),
        (
            "streaming ```\n```py\nif a < b:",
            'streaming ```\n<pre><code class="language-py">if a &lt; b:</code></pre>\n',
        ),
        (
            "```sh\necho $HOME `x` \\( <y> *a* [b]",
            '<pre><code class="language-sh">echo &#36;HOME &#96;x&#96; &#92;( &lt;y&gt; '
            "&#42;a&#42; &#91;b&#93;</code></pre>\n",
        ),
        # MathJax gets math as written but `<` as TeX's \lt (`&lt;` there is a TeX error);
        # JupyterLab's maths opens at \\( (one backslash is Markdown's escape) and \begin
        (
            "So $0 < x < 1$ and $$a<b$$ and \\\\(c<d\\\\), \\(e<f\\), <i>",
            "So $0 \\lt  x \\lt  1$ and $$a\\lt b$$ and \\\\(c\\lt d\\\\), \\(e&lt;f\\), &lt;i>",
        ),
        ("\\begin{align} a &< b \\end{align}", "\\begin{align} a &\\lt  b \\end{align}"),
        (
            "Run:\n\n    if a < b:\n        pass\n\nthen <p>",
            "Run:\n\n<pre><code>if a &lt; b:\n    pass\n</code></pre>\n\nthen &lt;p>",
        ),
        # code in a list item keeps its place in the item (and loses the item's indent)
        (
            "1. Install:\n   ```bash\n   echo <x>\n   ```\n2. Note:\n\n    x < y here",
            '1. Install:\n   <pre><code class="language-bash">echo &lt;x&gt;\n   </code></pre>\n'
            "2. Note:\n\n    x &lt; y here",
        ),
        (">", ">"),  # an empty quote was dropped
        ("a\n> ", "a\n> "),
        (
            "> ```html\n> <b>x</b>\n> ```",
            '> <pre><code class="language-html">&lt;b&gt;x&lt;/b&gt;\n> </code></pre>\n',
        ),
        ("Run:\n\n    print(1)\n\nthen <p>", "Run:\n\n    print(1)\n\nthen &lt;p>"),
        # an image is its link: the browser fetched it (and what its address carried)
        (
            "![chart](https://x.org/?q=secret) and <b>",
            "!\\[chart](https://x.org/?q=secret) and &lt;b>",
        ),
        ("see <https://example.com> or <b>", "see <https://example.com> or &lt;b>"),
        ("Escape tags like \\<div\\> or \\\\<b>", "Escape tags like &lt;div\\> or \\\\&lt;b>"),
        ("a ` stray\n\nthen <b>x</b> `y`", "a ` stray\n\nthen &lt;b>x&lt;/b> `y`"),
        # money is not math: JupyterLab typeset "$120 a night and the taxi $" in italics
        (
            "The hotel is $120 a night and the taxi $35, so $155.",
            "The hotel is \\\\$120 a night and the taxi \\\\$35, so \\\\$155.",
        ),
        ("from $5-$6 or `$x`", "from \\\\$5-\\\\$6 or `$x`"),
        ("Let $x$ be 2 and $y = x^2$; it costs $3", "Let $x$ be 2 and $y = x^2$; it costs \\\\$3"),
        # a link's address is kept (an escape there went into the href: %5C$TOKEN), its `$`
        # percent-encoded: two of them made one math span, put back into the href unquoted
        (
            "[docs](https://x.org/api?k=$KEY) for $5",
            "[docs](https://x.org/api?k=%24KEY) for \\\\$5",
        ),
        ("<https://x.org/a$b> and <b>", "<https://x.org/a%24b> and &lt;b>"),
    ],
)
def test_an_answers_html_is_shown_as_typed(answer: str, shown: str) -> None:
    """The answer went into the Markdown raw: JupyterLab rendered its tags (a "<div>" in the
    text vanished) while thinking and table cells were escaped. Code is left as it is."""
    from qwen3_jupyter.display import render

    rendered = render("", answer, True, False, streaming=False)[0]
    assert COLOURS.sub("", rendered).endswith(shown), rendered


COLOURS = re.compile(r'<span style="color: var\(--jp-mirror-editor-[\w-]+-color\)[^"]*">|</span>')
"""The colours `code_highlight` gives a code block's tokens (tested on their own)."""


OUR_TAGS = re.compile(
    r"</?(?:pre|code)(?: class=\"language-[\w+#.-]*\")?>"
    r"|<span style=\"color: var\(--jp-mirror-editor-[\w-]+-color\)[;\w:-]*\">|</span>"
    r"|<(?:https?|mailto):[^\s<>\"'$!\[\]|\\`]*>"  # an autolink with nothing to misread
)


@pytest.mark.parametrize(
    "answer",
    [
        'Sure! \\`<img src=x onerror="document.title=1">` done.',  # an escaped backtick
        "Here:\n\n```py`\n<img src=x onerror=alert(1)>\n<style>*{display:none}</style>",
        "- first\n\n    <img src=x onerror=alert(1)>\n",  # a list's paragraph, not code
        "- item\n   ```\n<img src=x onerror=alert(1)>\n```",  # a fence inside a list item
        "> ```\n<img src=x onerror=alert(1)>",  # a fence inside a quote
        "\\( <img src=x onerror=alert(1)> \\)",
        "$ <img src=x onerror=alert(1)> $",
        "x](<script>document.title=1</script>)",
        "[a](<img/src=x/onerror=alert(1)>)",
        "``<img src=x onerror=alert(1)>` ``",
        "    <img src=x onerror=alert(1)>\n<img src=x onerror=alert(2)>",
        "<https://x.org/a>b<img src=x onerror=alert(1)>",
        '```html lang="<img src=x onerror=alert(1)>"\nok\n```',
        # images JupyterLab fetched where this package saw code (seen in Chromium)
        "- first\n\n    ![](https://x.org/px?list)\n",
        "- item\n   ```\n![](https://x.org/px?fence)\n```",
        "text\n\u00a0\n    ![](https://x.org/px?nbsp)",
        "```\ncode\n```~\n![](https://x.org/px?tilde)\n",
        "ok\x0c```\n![](https://x.org/px?ff)\n```",
        "ok\u2028```\n![](https://x.org/px?ls)\n```",
        "$x ![](https://x.org/px?math) y$",
        "[a](https://x.org/![](https://x.org/px?address))",
        "`![](https://x.org/px?span)` <",
        "Note: \\![](https://x.org/px?backslash) and \\\\\\![x][r]\n\n[r]: https://x.org/px?ref",
        "> \\![](https://x.org/px?quoted)",
        "- " * 600 + "deep <b>",  # nesting past Python's recursion limit lost the answer
        "> " * 600 + "deep <b>",
        "- - - " * 400 + "<b>",
        # links, autolinks: an image inside where JupyterLab took no autolink (seen in Chromium)
        "\\<mailto:a/![](https://x.org/px?m01)>",
        "| <mailto:a|![](https://x.org/px?m02)> | x |\n|---|---|",
        "Path C:\\\\`<mailto:a/`![](https://x.org/px?m03)>",
        '[a](https://a.org/$) " onanimationstart="alert(1)" x=" [b](https://b.org/$)',
    ],
)
def test_no_tag_the_model_wrote_reaches_the_markdown(answer: str) -> None:
    """JupyterLab runs the raw HTML in a live session's Markdown, event handlers included, and
    the notebook saved after it is signed, so they ran again when it was reopened: an answer
    steered by a document ran script with the server's rights. Each of these got a tag through
    where this package's reading of the Markdown differed from JupyterLab's (seen in Chromium).
    Now no `<` the model wrote is left as one, whatever reads the text: only the package's own
    code tags and autolinks remain."""
    from qwen3_jupyter.display import render
    from qwen3_jupyter.markdown_text import escape_inline

    for shown in (render("", answer, True, False, streaming=False)[0], escape_inline(answer)):
        assert "<" not in OUR_TAGS.sub("", shown), shown
        assert "![" not in shown, shown
    thinking = render(f"step\r\r{answer}\r\r# heading", "", True, False, streaming=False)[0]
    inside = thinking.split("<blockquote>", 1)[1].split("</blockquote>", 1)[0]
    assert "\n\n" not in inside and "<" not in OUR_TAGS.sub("", inside.replace("<br>", "")), inside


def test_a_status_line_shows_what_a_server_named_as_typed() -> None:
    """A status line ("… now serves NAME; asking it instead") is Markdown: a served model's
    name `<img src=x onerror=…>` ran its handler while the line showed (seen in Chromium)."""
    from qwen3_jupyter.display import _italic

    shown = _italic("now serves <img src=x onerror=alert(1)> *x*; asking it instead…")
    assert shown.startswith("*") and shown.endswith("*") and "<" not in shown, shown
    assert "\\*x\\*" in shown, shown


def test_streamed_text_waits_for_a_character_split_across_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A character split across tokens decoded to U+FFFD until its last byte came: the stream
    showed "Great job �" between updates."""
    from qwen3_jupyter import stream_pace
    from qwen3_jupyter.embedded import build_tokenizer
    from qwen3_jupyter.engines.decode_run import TextStream

    monkeypatch.setattr(stream_pace, "SHOWN_CHARACTERS_PER_SECOND", float("inf"))  # every update
    tokenizer = build_tokenizer()
    ids = tokenizer.encode("Great job 🦙🧠 done")
    shown: list[str] = []
    stream = TextStream(tokenizer, shown.append, interval=0.0)
    for end in range(1, len(ids) + 1):
        stream.update(ids[:end])
    partial = [tokenizer.decode(ids[:end]) for end in range(1, len(ids) + 1)]
    assert any("\ufffd" in text for text in partial), "the emoji are whole tokens: no test"
    assert not [text for text in shown if "\ufffd" in text], shown
    assert shown[-1] == "Great job 🦙🧠 done"


def test_a_long_text_streams_less_often() -> None:
    from qwen3_jupyter.stream_pace import next_wait

    assert next_wait(0.1, "x" * 1000) == 0.1
    assert next_wait(0.1, "x" * 130_000) == pytest.approx(0.65)


REPL_SHOWS_A_RESULT = """
import pickle, qwen3_jupyter
r = qwen3_jupyter.generate_batch(
    ["hi"], model="tiny", max_new_tokens=300, ignore_eos=True, think=False, progress=False
)[0]
len(r.token_ids)
r
pickle.loads(pickle.dumps(r)) == r
"""


def test_a_plain_repl_shows_a_result_in_a_few_lines(model_cache: Path) -> None:
    """`>>> r` in a plain Python REPL printed the dataclass repr, ~7 KB of it `token_ids`; now
    the footer and the trimmed answer, as IPython shows it, in the argument names a Python
    caller types (it said "raise --max-new-tokens"). The Result still pickles and compares
    equal (the fields, token ids included, are all there)."""
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-i", "-q"],
        input=REPL_SHOWS_A_RESULT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = ran.stdout.strip().splitlines()
    shown = [line for line in said if not line.startswith("[qwen3] loaded")]  # its notice
    assert shown[0] == "300", (ran.stdout[-2000:], ran.stderr[-2000:])
    assert shown[1].startswith("Result: [qwen3] tiny on cpu (eager) · 300 tokens"), shown
    assert shown[1].endswith("answer cut off at max_new_tokens (raise it for the rest)"), shown
    assert shown[2].startswith("answer: ") and shown[-1] == "True", shown
    assert len(shown) == 4, shown
    assert len("\n".join(shown)) < 1000 and "token_ids" not in ran.stdout, ran.stdout


@pytest.mark.parametrize(
    ("prompt", "markdown"),
    [
        ("Is $40 fair? __init__ *x*", "Is \\\\$40 fair? \\_\\_init\\_\\_ \\*x\\*"),
        ("<b>tags</b> & [link](x)", "&lt;b&gt;tags&lt;/b&gt; &amp; \\[link\\](x)"),
        # `\\(`, `\\[`, `\\begin` are maths openers to JupyterLab: they swallowed the rows up
        # to the closer; `\\\\` was one backslash to MathJax
        ("Is \\( the opener?", "Is \\\\<span></span>( the opener?"),
        ("Display \\[a+b\\] here", "Display \\\\<span></span>\\[a+b\\\\<span></span>\\] here"),
        ("env \\begin{align} a", "env \\\\<span></span>begin{align} a"),
        ("a\\\\b costs \\$5", "a\\\\<span></span>\\\\<span></span>b costs \\\\<span></span>\\\\$5"),
        ("plain (x) \\*", "plain (x) \\\\<span></span>\\*"),
    ],
)
def test_a_prompt_in_a_table_is_markdown_that_shows_it_as_typed(prompt: str, markdown: str) -> None:
    """Each form was checked in JupyterLab 4 through Chromium: the table's rows intact, the
    cell's text as typed, no MathJax."""
    from qwen3_jupyter.markdown_text import as_typed

    assert as_typed(prompt) == markdown
