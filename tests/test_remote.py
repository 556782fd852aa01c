"""`%qwen3 --server` through a real kernel, against a real OpenAI-compatible server.

The server is `transformers serve` of the tiny model (session fixture `openai_server`); the
failures a notebook meets in the wild come from a proxy in front of it (`tests.openai_server`)
or from a server that is not there. The kernel runs with an API key in its environment; the last
test reads every message, log and file these tests produced and finds no trace of it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.bench._openai_server import OpenAIServer, free_port
from qwen3_jupyter.markdown_text import escape_html
from tests.kernel import Execution, ended_as_interrupted
from tests.openai_server import ChaosProxy, LoggedKernel

KEY = f"sk-kernel-{secrets.token_hex(12)}"
"""The key in the kernel's environment: the server ignores it, the /auth/ proxy rejects it."""
PROXY_KEY = f"sk-proxy-{secrets.token_hex(12)}"
"""The key the /auth/ proxy accepts (given in a URL by one test)."""
STATUS_LINES = ("*connecting", "*waiting", "*asking", "*streaming", "*sending", "*generating")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("remote")


@pytest.fixture(scope="module")
def proxy(openai_server: OpenAIServer, work: Path) -> Iterator[ChaosProxy]:
    chaos = ChaosProxy(
        openai_server.url, PROXY_KEY, work / "proxy.log", checkpoint=openai_server.checkpoint
    )
    yield chaos
    chaos.stop()


@pytest.fixture(scope="module")
def rk(kernel_env: dict[str, str], work: Path) -> Iterator[LoggedKernel]:
    """The kernel of this module: the extension loaded, an API key in its environment."""
    k = LoggedKernel({**kernel_env, "QWEN3_JUPYTER_API_KEY": KEY}, work / "kernel.log")
    loaded = k.run(
        "%load_ext qwen3_jupyter\nimport os, gc, qwen3_jupyter\nkeep = 42\n"
        "from qwen3_jupyter.engines.urls import server_key"
    )
    assert loaded.status == "ok", loaded.error
    yield k
    k.shutdown()


def ok(kernel: LoggedKernel, code: str, timeout: float = 120) -> Execution:
    execution = kernel.run(code, timeout=timeout)
    assert execution.status == "ok", (code, execution.error, execution.stderr)
    return execution


def answer_updates(ex: Execution) -> list[str]:
    """The streamed texts of the answer's display (status lines left out)."""
    return [
        m["content"]["data"]["text/markdown"]
        for m in ex.of_type("update_display_data")
        if m["content"]["data"].get("text/markdown")
        and not m["content"]["data"]["text/markdown"].startswith(STATUS_LINES)
    ]


KEPT = re.compile(r" \(the (\d+) tokens that came: _qwen3\)$")
"""How a failure mid-answer ends its message: what streamed before it is the new `_qwen3`."""


def failed(kernel: LoggedKernel, line: str) -> str:
    """Run a %qwen3 line that must fail with a one-line UsageError; its message (without the
    note of what it kept). The kernel and its variables survive, and the last result, unless
    text streamed before the failure: then that text is `_qwen3`, with the error."""
    before = kernel.value("repr(globals().get('_qwen3'))")
    ex = kernel.run(line)
    assert ex.status == "error", (line, ex.stdout)
    assert ex.reply["ename"] == "UsageError", ex.reply
    message = str(ex.reply["evalue"])
    assert "\n" not in message and "Traceback" not in ex.stderr
    assert kernel.value("keep") == 42
    kept = KEPT.search(message)
    if kept is None:
        assert kernel.value("repr(globals().get('_qwen3'))") == before
        return message
    message = message[: kept.start()]
    partial = kernel.value("(_qwen3.stop_reason, _qwen3.error, _qwen3.completion_tokens)")
    assert partial == ("error", message, int(kept.group(1))), partial
    return message


def wait_for_streamed_text(kernel: LoggedKernel, msg_id: str, timeout: float = 60) -> str:
    """Read the kernel's messages until the answer's display shows streamed text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kernel.kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        text = msg["content"].get("data", {}).get("text/markdown", "")
        if msg["msg_type"] == "update_display_data" and text and not text.startswith(STATUS_LINES):
            return str(text)
    raise TimeoutError("the answer never started streaming")


def wait_until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


# -- answers ---------------------------------------------------------------------------------


def test_streamed_answer_footer_result_and_nothing_in_out(
    rk: LoggedKernel, openai_server: OpenAIServer
) -> None:
    url = openai_server.url
    ex = ok(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 40 --seed 1 What is a kernel?")
    updates = answer_updates(ex)
    assert len(updates) >= 2 and len(set(updates)) >= 2, "the answer did not stream"
    ids = {
        m["content"]["transient"]["display_id"]
        for m in ex.of_type("update_display_data")
        if m["content"]["data"].get("text/markdown") in updates
    }
    assert len(ids) == 1, "one display receives every streamed update"
    assert ex.stdout.count("[qwen3]") == 1
    footer = ex.stdout.strip()
    for part in (
        f"[qwen3] {openai_server.model} on {url} (remote)",
        "40 tokens (",
        "tok/s",
        "first token ",
        "model memory lives on the server",
    ):
        assert part in footer, (part, footer)
    assert "peak" not in footer and "freed" not in footer
    result = rk.value(
        "(_qwen3.engine, _qwen3.completion_tokens, _qwen3.prompt_tokens > 0, _qwen3.thinking,"
        " bool(_qwen3.answer), _qwen3.peak_memory_bytes, _qwen3.time_to_first_token_s > 0,"
        " _qwen3.stop_reason, _qwen3.device)"
    )
    assert result == ("remote", 40, True, "", True, None, True, "length", url)
    assert ex.result() is None and rk.value("len(Out)") == 0
    # No response or chunk object outlives the call (control: the class exists).
    assert (
        rk.value(
            "__import__('openai').types.chat.ChatCompletionChunk.__name__ == 'ChatCompletionChunk'"
            " and sum(type(o).__name__ == 'ChatCompletionChunk' for o in gc.get_objects())"
        )
        == 0
    )


def test_thinking_on_and_off_from_the_reasoning_field_and_inline_tags(
    rk: LoggedKernel, openai_server: OpenAIServer, proxy: ChaosProxy
) -> None:
    fields = "(_qwen3.think, bool(_qwen3.thinking), _qwen3.answer, _qwen3.thinking_finished)"
    thinking = ok(rk, f"%qwen3 --server {openai_server.url} --think --max-new-tokens 12 Hi")
    assert rk.value(fields) == (True, True, "", False)  # random weights never close </think>
    assert thinking.texts()[-1].startswith("<details>")
    assert "Thinking (not finished)" in thinking.texts()[-1]
    assert "thinking not finished" in thinking.stdout
    ok(rk, f"%qwen3 --server {openai_server.url} --no-think --max-new-tokens 12 Hi")
    assert rk.value("(_qwen3.think, _qwen3.thinking, bool(_qwen3.answer))") == (False, "", True)
    # A server without a reasoning parser: the same text inline between <think> tags.
    ok(rk, f"%qwen3 --server {proxy.url('inline')} --think --max-new-tokens 12 Hi")
    assert rk.value(fields) == (True, True, "", False)
    assert "<think>" not in rk.value("_qwen3.thinking")
    ok(rk, f"%qwen3 --server {proxy.url('inline')} --no-think --max-new-tokens 12 Hi")
    assert rk.value("(_qwen3.thinking, bool(_qwen3.answer))") == ("", True)


def test_thinking_a_prefilled_template_opened_is_thinking_not_the_answer(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """Without a reasoning parser, a template that opens `<think>` in the prompt (Thinking-2507,
    Qwen3.5) streams `thought</think>answer` with no opening tag: a thought cut off by the
    token budget came back as the finished answer, and streamed as the answer all along."""
    url = proxy.url("prefilled")
    fields = "(_qwen3.think, bool(_qwen3.thinking), _qwen3.answer, _qwen3.thinking_finished)"
    ex = ok(rk, f"%qwen3 --server {url} --think --max-new-tokens 12 Hi")
    assert rk.value(fields) == (True, True, "", False)
    assert "thinking not finished" in ex.stdout
    updates = answer_updates(ex)
    assert updates and all(u.startswith(("<details", "*Thinking…")) for u in updates), updates
    advice = (
        f"[qwen3] {url} sends the model's thinking inside the answer (no reasoning parser): "
        "start the server with --reasoning-parser qwen3 (vLLM, SGLang) to separate them"
    )
    assert advice in ex.stdout, ex.stdout
    again = ok(rk, f"%qwen3 --server {url} --think --max-new-tokens 12 Hi")
    assert "reasoning-parser" not in again.stdout, "said once per server"
    ok(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 12 Hi")
    assert rk.value("(_qwen3.thinking, bool(_qwen3.answer))") == ("", True)


def test_untagged_text_from_a_model_whose_name_does_not_say_stays_the_answer_with_a_notice(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """The same stream under a name that does not say the template thinks (an Instruct model
    answers exactly so, with thinking on by default): the text stays the answer, streamed as
    the answer, and one notice says what it may be and how to be sure."""
    url = proxy.url("untagged")
    fields = "(bool(_qwen3.thinking), bool(_qwen3.answer), _qwen3.thinking_finished)"
    ex = ok(rk, f"%qwen3 --server {url} --think --max-new-tokens 12 Hi")
    assert rk.value(fields) == (False, True, True)
    updates = answer_updates(ex)
    assert updates and not any(u.startswith("<details") for u in updates), updates
    notice = (
        f"[qwen3] {url}: the answer reached --max-new-tokens without thinking tags; if this "
        "model's template opens <think> itself, this text is its thinking (a reasoning parser "
        "on the server, --reasoning-parser qwen3, separates them)"
    )
    assert notice in ex.stdout, ex.stdout
    again = ok(rk, f"%qwen3 --server {url} --think --max-new-tokens 12 Hi")
    assert "reasoning-parser" not in again.stdout, "said once per server"


def test_ignore_eos_refused_by_transformers_serve_is_said_once(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """`transformers serve` answers 422 to `ignore_eos`: it was dropped in silence."""
    url = proxy.url("pass")
    line = f"%qwen3 --server {url} --ignore-eos --no-think --max-new-tokens 4 Hi"
    ex = ok(rk, line)
    assert f"[qwen3] {url} refuses `ignore_eos`: --ignore-eos has no effect there" in ex.stdout
    assert rk.value("bool(_qwen3.answer)")
    assert "refuses" not in ok(rk, line).stdout, "said once per server"


def test_one_client_per_server_reused_and_its_connection_kept(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """However the URL is written (a trailing slash, a pasted endpoint), one server is one
    client: each spelling made its own, with its own pool, gauge row and notices."""
    url = proxy.url("pass")  # ends its streams with data: [DONE], as vLLM does
    ok(rk, "from qwen3_jupyter.session import SESSION\nclients = []\nbefore = set(SESSION.engines)")
    for written in (url, url + "/", url + "/chat/completions"):
        ok(rk, f"%qwen3 --server {written} --no-think --max-new-tokens 4 Hi")
        ok(rk, f"clients.append(id(SESSION.engines[server_key({url!r})].connection._client))")
    assert rk.value("len(set(clients))") == 1
    posts = proxy.client_ports[-3:]
    assert len(set(posts)) == 1, f"a new connection per call: client ports {posts}"
    assert rk.value("len(set(SESSION.engines) - before)") <= 1, "one engine for the three"


def test_closing_a_finished_stream_late_leaves_its_pooled_connection_alone(
    openai_server: OpenAIServer, proxy: ChaosProxy
) -> None:
    """A `%qwen3 --stop` landing as a call ends runs that call's closer after its stream gave
    the connection back to the pool. The closer shut the socket down, under whichever request
    took that connection next; closing a finished stream now leaves its connection alone."""
    import openai

    from qwen3_jupyter.engines.remote_http import pooled_http_client
    from qwen3_jupyter.engines.remote_stream import abort

    client = openai.OpenAI(
        base_url=proxy.url("pass"), api_key=KEY, http_client=pooled_http_client(openai)
    )

    def ask() -> Any:
        stream = client.chat.completions.create(
            model=openai_server.model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            stream=True,
        )
        for _ in stream:
            pass
        return stream

    try:
        abort(ask())
        ask()
    finally:
        client.close()
    ports = proxy.client_ports[-2:]
    assert len(set(ports)) == 1, f"the second request needed a new connection: ports {ports}"


def test_batch_of_20_with_concurrency_4_in_input_order(
    rk: LoggedKernel, proxy: ChaosProxy, work: Path
) -> None:
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {i}" for i in range(20)) + "\n")
    out = work / "batch.jsonl"
    proxy.max_in_flight = 0
    ex = ok(
        rk,
        f"%qwen3 --server {proxy.url('pass')} --file {prompts} --concurrency 4 --out {out} "
        "--no-think --max-new-tokens 8",
    )
    assert rk.value("[r.prompt for r in _qwen3]") == [f"prompt number {i}" for i in range(20)]
    assert rk.value("(len(_qwen3), _qwen3.report.completed, _qwen3.report.failed)") == (20, 20, 0)
    assert rk.value("all(r.engine == 'remote' and r.answer for r in _qwen3)")
    assert proxy.max_in_flight == 4, "four requests in flight at once, never more"
    assert "20/20 prompts" in ex.stdout and "4 concurrent requests" in ex.stdout
    tokens = rk.value("(_qwen3.report.completion_tokens, sum(r.completion_tokens for r in _qwen3))")
    assert tokens[0] == tokens[1] > 0 and f"{tokens[0]:,} tokens, " in ex.stdout, ex.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(20))
    assert all(r["prompt"] == f"prompt number {r['index']}" for r in records)


def test_batch_options_of_a_local_model_are_named_as_ignored_for_a_server(
    rk: LoggedKernel, openai_server: OpenAIServer, work: Path
) -> None:
    prompts = work / "two-prompts.txt"
    prompts.write_text("one\ntwo\n", encoding="utf-8")
    flags = "--batch-size 8 --memory-budget 1GiB --concurrency 2 --no-think --max-new-tokens 2"
    ex = ok(rk, f"%qwen3 --server {openai_server.url} --file {prompts} {flags}")
    assert (
        "[qwen3] --batch-size and --memory-budget apply to a model in this kernel: ignored for "
        "a server, which gets 2 requests at once (--concurrency)"
    ) in ex.stdout
    assert "2/2 prompts" in ex.stdout


def test_batch_retries_busy_and_dropped_and_records_what_still_fails(
    rk: LoggedKernel, proxy: ChaosProxy, work: Path
) -> None:
    prompts = ["one", "two CUT", "three", "four", "five", "six"]
    out = work / "chaos.jsonl"
    proxy.busy_left = 2
    proxy.busy_bodies.clear()
    ok(
        rk,
        f"import qwen3_jupyter\nres = qwen3_jupyter.generate_batch({prompts!r}, "
        f"server={proxy.url('pass')!r}, concurrency=3, out={str(out)!r}, think=False, "
        "max_new_tokens=6, progress=False)",
    )
    assert rk.value("[r.prompt for r in res]") == prompts
    report = rk.value("(res.report.completed, res.report.failed, res.report.retries)")
    # The cut prompt is tried 4 times (3 retries) whatever failed it; a 503 that hit another
    # prompt is one retry more. Which prompt a 503 hits depends on thread timing.
    assert len(proxy.busy_bodies) == 2
    busy_elsewhere = sum(b"CUT" not in body for body in proxy.busy_bodies)
    assert report == (5, 1, 3 + busy_elsewhere)
    error = rk.value("res[1].error")
    assert "dropped" in error and proxy.url("pass") in error
    assert rk.value("[bool(r.answer) for r in res]") == [True, False, True, True, True, True]
    records = {json.loads(line)["index"]: json.loads(line) for line in out.read_text().splitlines()}
    assert sorted(records) == list(range(6)) and records[1]["error"] == error


def test_env_config_and_python_api_use_the_same_server(
    rk: LoggedKernel, openai_server: OpenAIServer
) -> None:
    url = openai_server.url
    ok(rk, f"os.environ['QWEN3_JUPYTER_SERVER'] = {url!r}")
    ok(rk, "%qwen3 --no-think --max-new-tokens 4 Hi")
    assert rk.value("_qwen3.engine") == "remote"
    ok(rk, "del os.environ['QWEN3_JUPYTER_SERVER']")
    bare = url.removeprefix("http://")  # `localhost:8000/v1`, as servers print it
    ok(rk, f"%config Qwen3Magics.server = {bare!r}")
    ok(rk, "%qwen3 --no-think --max-new-tokens 4 Hi")
    assert rk.value("_qwen3.engine") == "remote"
    # A bad setting is named where it was set, not as a --server nobody typed.
    ok(rk, "%config Qwen3Magics.server = 'ftp://me:pw@host/v1'")
    assert failed(rk, "%qwen3 Hi").startswith(
        "%config Qwen3Magics.server = 'ftp://***@host/v1' is not an http(s) URL"
    )
    ok(rk, "%config Qwen3Magics.server = ''")
    chats = ok(
        rk,
        f"with qwen3_jupyter.inference(server={url!r}, think=False, max_new_tokens=4) as chat:\n"
        "    via_inference = [chat('Hi') for _ in range(2)][-1]",
    )
    assert rk.value("(via_inference.engine, via_inference.completion_tokens)") == ("remote", 4)
    # Each chat's line ("waiting for the first token…") ends as its footer: emptied, it stayed
    # in the saved notebook as an empty output per chat.
    shown = chats.final_displays()
    assert shown and all(d.get("text/plain", "").strip() for d in shown), shown
    assert all("4 tokens" in d["text/plain"] for d in shown), shown
    ok(rk, "from qwen3_jupyter.engines.urls import server_key")  # alone, too (-k): not assumed
    ok(rk, "from qwen3_jupyter.session import SESSION")
    assert rk.value(f"list(SESSION.engines).count(server_key({url!r}))") == 1


def test_interrupt_closes_the_stream_keeps_the_partial_answer_and_the_next_call_works(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    url = proxy.url("pass")
    msg_id = rk.start(f"%qwen3 --server {url} --no-think --max-new-tokens 4000 Tell me all")
    streaming = wait_for_streamed_text(rk, msg_id)
    time.sleep(0.5)
    disconnects = len(proxy.disconnects)
    interrupted_at = time.monotonic()
    rk.interrupt()
    ex = rk.collect(msg_id, timeout=60)
    assert time.monotonic() - interrupted_at < 3.0, "the cell did not stop at once"
    assert ended_as_interrupted(ex), (ex.reply, streaming)
    assert "interrupted: partial answer kept" in ex.stdout
    stop, tokens, answer = rk.value("(_qwen3.stop_reason, _qwen3.completion_tokens, _qwen3.answer)")
    assert stop == "interrupted" and 0 < tokens < 4000 and answer
    # The connection was closed: the proxy's next write found the client gone, and it dropped
    # the request upstream (which is how the server learns to stop generating).
    wait_until(lambda: len(proxy.disconnects) > disconnects and proxy.in_flight == 0)
    ok(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 6 Hi")
    assert rk.value("(_qwen3.stop_reason, _qwen3.completion_tokens)") == ("length", 6)


def test_interrupting_a_batch_closes_its_streams_and_keeps_what_finished(
    rk: LoggedKernel, proxy: ChaosProxy, work: Path
) -> None:
    out = work / "interrupted.jsonl"
    prompts = [f"long answer {i}" for i in range(8)]
    msg_id = rk.start(
        f"res = qwen3_jupyter.generate_batch({prompts!r}, server={proxy.url('pass')!r}, "
        f"concurrency=2, out={str(out)!r}, think=False, max_new_tokens=150, progress=False)"
    )
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().strip()):
        assert time.monotonic() < deadline, "no prompt finished"
        time.sleep(0.05)
    disconnects = len(proxy.disconnects)
    interrupted_at = time.monotonic()
    rk.interrupt()
    ex = rk.collect(msg_id, timeout=60)
    assert time.monotonic() - interrupted_at < 3.0, "the cell did not stop at once"
    assert ended_as_interrupted(ex), ex.reply
    kept = rk.value("(res.report.interrupted, [r.prompt for r in res], res.report.completed)")
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept[0] is True and 1 <= len(kept[1]) < 8 and kept[2] == len(kept[1])
    assert sorted(prompts[r["index"]] for r in written) == sorted(kept[1])  # kept = written
    assert kept[1] == sorted(kept[1], key=prompts.index)  # in input order
    # The streams in flight were closed: the proxy found the client gone and dropped them.
    wait_until(lambda: len(proxy.disconnects) > disconnects and proxy.in_flight == 0)
    workers = "sum(t.name.startswith('qwen3-remote') for t in __import__('threading').enumerate())"
    wait_until(lambda: rk.value(workers) == 0)
    ok(rk, f"%qwen3 --server {proxy.url('pass')} --no-think --max-new-tokens 4 Hi")
    assert rk.value("_qwen3.completion_tokens") == 4


def test_stop_ends_a_server_batch_running_in_a_thread_and_keeps_what_finished(
    rk: LoggedKernel, proxy: ChaosProxy, work: Path
) -> None:
    """An interrupt reaches only the main thread; a batch started in a thread (so the notebook
    stays free) is ended by `%qwen3 --stop` instead, as an interrupt would end it."""
    out = work / "stopped.jsonl"
    prompts = [f"long answer {i}" for i in range(8)]
    ok(
        rk,
        "import threading\nstopped = []\n"
        f"run = lambda: stopped.append(qwen3_jupyter.generate_batch({prompts!r}, "
        f"server={proxy.url('pass')!r}, concurrency=2, out={str(out)!r}, think=False, "
        "max_new_tokens=150, progress=False))\n"
        "batcher = threading.Thread(target=run, name='batcher')\nbatcher.start()",
    )
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_text().strip()):
        assert time.monotonic() < deadline, "no prompt finished"
        time.sleep(0.05)
    disconnects = len(proxy.disconnects)
    said = ok(rk, "%qwen3 --stop").stdout
    assert "asked a --server batch in thread 'batcher' to stop at its next step" in said, said
    ok(rk, "batcher.join(30)\nassert not batcher.is_alive()")
    kept = rk.value("(stopped[0].report.interrupted, [r.prompt for r in stopped[0]])")
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept[0] is True and 1 <= len(kept[1]) < 8
    assert sorted(prompts[r["index"]] for r in written) == sorted(kept[1])  # kept = written
    wait_until(lambda: len(proxy.disconnects) > disconnects and proxy.in_flight == 0)
    assert "nothing to stop" in ok(rk, "%qwen3 --stop").stdout  # the batch is gone from the list
    ok(  # a single call in a thread stops at its next token, its partial answer kept
        rk,
        "from qwen3_jupyter.generation import GenerationOptions\n"
        "from qwen3_jupyter.session import SESSION\n"
        f"engine = SESSION.engine(server={proxy.url('pass')!r})\n"
        "streaming, single = threading.Event(), []\n"
        "long = GenerationOptions(max_new_tokens=4000, think=False)\n"
        "asker = threading.Thread(name='asker', target=lambda: single.append(SESSION.ask(\n"
        "    engine, 'Tell me all', long, on_text=lambda text: streaming.set())))\n"
        "asker.start()\nassert streaming.wait(60)",
    )
    said = ok(rk, "%qwen3 --stop").stdout
    assert "asked a --server call in thread 'asker' to stop at its next step" in said, said
    ok(rk, "asker.join(30)\nassert not asker.is_alive()")
    stop, tokens = rk.value("(single[0].stop_reason, single[0].completion_tokens)")
    assert stop == "interrupted" and 0 < tokens < 4000
    wait_until(lambda: proxy.in_flight == 0)


def test_an_error_in_the_callers_on_text_is_theirs_not_the_servers(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """It used to come out as "malformed stream from …: is it an OpenAI-compatible server?"."""
    ok(
        rk,
        "def typo(text):\n    raise NameError(\"name 'widgte' is not defined\")\n"
        f"with qwen3_jupyter.inference(server={proxy.url('pass')!r}, think=False, "
        "max_new_tokens=40) as chat:\n"
        "    try:\n        chat('Tell me all', on_text=typo)\n"
        "    except Exception as exc:\n        caught = (type(exc).__name__, str(exc))\n"
        "    after = chat('Hi', max_new_tokens=4)",
    )
    assert rk.value("caught") == ("NameError", "name 'widgte' is not defined")
    assert rk.value("after.completion_tokens") == 4
    wait_until(lambda: proxy.in_flight == 0)


# -- failures: one line each, kernel and variables intact -----------------------------------


def test_wrong_port_and_a_server_that_went_away(
    rk: LoggedKernel, proxy: ChaosProxy, openai_server: OpenAIServer
) -> None:
    port = free_port()
    message = failed(rk, f"%qwen3 --server http://127.0.0.1:{port}/v1 --model m Hi")
    assert message.startswith(f"cannot reach http://127.0.0.1:{port}/v1 (")
    assert "is the server running, on that host and port?" in message
    going = ChaosProxy(openai_server.url, PROXY_KEY, proxy.log)
    url = going.url("pass")
    ok(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 4 Hi")
    going.stop()
    assert failed(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 4 Hi").startswith(
        f"cannot reach {url}"
    )


def test_wrong_model_name_lists_what_is_served(
    rk: LoggedKernel, openai_server: OpenAIServer
) -> None:
    message = failed(rk, f"%qwen3 --server {openai_server.url} --model Qwen/Qwen3-8B Hi")
    assert message == (
        f"model 'Qwen/Qwen3-8B' is not served at {openai_server.url} (it serves: "
        f"{openai_server.model}): pass --model {openai_server.model!r}, or leave --model out "
        "for the first"
    )


def test_a_request_longer_than_the_served_context_names_the_option_to_change(
    rk: LoggedKernel, proxy: ChaosProxy, openai_server: OpenAIServer, work: Path
) -> None:
    """Behind /limited/, vLLM 0.33 with a 256-token context: it shortens max_tokens to the room
    the prompt leaves, so an answer budget at or past the context is sent (the answer stops
    at the context), and refuses only a prompt that fills the context or exceeds it. Its
    refusals come back as one line naming the prompt's size, as the server counted it, and
    what to change."""
    url, model = proxy.url("limited"), openai_server.model
    context = f"the 256-token context {model} is served with at {url}"

    ok(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 256 Hi")
    stop, prompt, tokens = rk.value(
        "(_qwen3.stop_reason, _qwen3.prompt_tokens, _qwen3.completion_tokens)"
    )
    assert (stop, prompt + tokens) == ("context", 256), (stop, prompt, tokens)

    long = "word " * 300
    message = failed(rk, f"%qwen3 --server {url} --max-new-tokens 4 {long}")
    alone = rf"prompt \((\d+) tokens\) exceeds {re.escape(context)}: shorten it"
    assert re.fullmatch(alone, message), message

    def tokens_of(text: str) -> int:
        return proxy.prompt_tokens({"messages": [{"role": "user", "content": text}]})

    words = next(n for n in range(200, 300) if tokens_of(" ".join(["word"] * n)) >= 256)
    filling = " ".join(["word"] * words)
    assert tokens_of(filling) == 256, "a prompt of exactly the context"
    message = failed(rk, f"%qwen3 --server {url} --max-new-tokens 4 {filling}")
    assert message == (
        f"the prompt fills the whole 256-token context {model} is served with at {url}, "
        "leaving no room for an answer: shorten it"
    )

    question = "word " * 130
    ok(rk, f"%qwen3 --server {url} --chat --no-think --max-new-tokens 4 {question}")
    message = failed(rk, f"%qwen3 --server {url} --chat --no-think --max-new-tokens 4 {question}")
    assert "shorten it (--reset clears a --chat conversation)" in message, message
    ok(rk, "%qwen3 --reset")

    code = (
        f"r = qwen3_jupyter.generate_batch(['Hi', {long!r}, 'Yo'], server={url!r}, "
        "max_new_tokens=4, think=False, progress=False)\n"
        "print([x.error for x in r])"
    )
    errors = ok(rk, code).stdout
    assert errors.count("None") == 2 and f"exceeds {context}: shorten it" in errors, errors


def test_sglang_refuses_a_request_longer_than_its_context_in_this_magics_words(
    rk: LoggedKernel, proxy: ChaosProxy, openai_server: OpenAIServer, work: Path
) -> None:
    """SGLang refuses prompt + max_tokens beyond its context: an answer budget no prompt fits
    is refused before anything is sent (a batch once, not once per prompt); the server's own
    refusals name the prompt's size and the option to change."""
    url, model = proxy.url("sglang"), openai_server.model
    context = f"the 256-token context {model} is served with at {url}"

    def posts() -> int:
        return sum(line.startswith("POST /sglang/") for line in proxy.requests)

    sent = posts()
    assert failed(rk, f"%qwen3 --server {url} --max-new-tokens 99999999 Hi") == (
        f"--max-new-tokens 99,999,999 leaves no room for the prompt in {context}: "
        "lower --max-new-tokens"
    )
    prompts = work / "limited-prompts.txt"
    prompts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    results = work / "limited.jsonl"
    batch = f"%qwen3 --server {url} --file {prompts} --out {results} --max-new-tokens 256"
    assert failed(rk, batch).startswith("--max-new-tokens 256 leaves no room for the prompt")
    assert posts() == sent and not results.exists(), "nothing was sent, no results file made"

    hi = proxy.prompt_tokens(
        {"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": {}}
    )
    assert failed(rk, f"%qwen3 --server {url} --max-new-tokens 250 Hi") == (
        f"prompt ({hi} tokens) + --max-new-tokens 250 exceeds {context}: shorten it or lower "
        "--max-new-tokens"
    )
    message = failed(rk, f"%qwen3 --server {url} --max-new-tokens 4 {'word ' * 300}")
    alone = rf"prompt \((\d+) tokens\) exceeds {re.escape(context)}: shorten it"
    assert re.fullmatch(alone, message), message


def test_sglang_answers_any_model_name_and_ignores_a_seed_which_is_said_once(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """SGLang (`owned_by: "sglang"` in its listing) answers whatever model a request names, so a
    name it does not list is no error there; and it samples without the request's seed unless
    started deterministic, which the first seeded call says."""
    url = proxy.url("sglang")
    first = ok(
        rk, f"%qwen3 --server {url} --model any-name --seed 3 --no-think --max-new-tokens 4 Hi"
    )
    assert "SGLang at " in first.stdout and "ignores --seed" in first.stdout
    again = ok(
        rk, f"%qwen3 --server {url} --model any-name --seed 3 --no-think --max-new-tokens 4 Hi"
    )
    assert "ignores --seed" not in again.stdout, "said once per server"
    code = (
        f"r = qwen3_jupyter.generate_batch(['a', 'b'], server={url!r}, model='any-name', "
        "think=False, max_new_tokens=4, progress=False)"
    )
    ok(rk, code)
    assert rk.value("(r.report.completed, r.report.failed)") == (2, 0)


def test_an_endpoint_that_is_not_openai(rk: LoggedKernel, proxy: ChaosProxy) -> None:
    for line in (f"--server {proxy.root}", f"--server {proxy.root}/api/v1 --model m"):
        message = failed(rk, f"%qwen3 {line} Hi")
        assert "does not answer like an OpenAI-compatible server" in message
        assert "it usually ends in /v1" in message
    assert "not an http(s) URL" in failed(rk, "%qwen3 --server ftp://host/v1 Hi")


def test_rejected_key_and_credentials_in_the_url(rk: LoggedKernel, proxy: ChaosProxy) -> None:
    url = proxy.url("auth")
    message = failed(rk, f"%qwen3 --server {url} Hi")
    assert message.startswith(f"the server at {url} rejected the API key (HTTP 401: ")
    assert "Incorrect API key provided: ***" in message  # the server echoed it; we did not
    assert "QWEN3_JUPYTER_API_KEY" in message
    wrong = url.replace("http://", "http://me:wrong-password-123@")
    masked = url.replace("http://", "http://***@")
    message = failed(rk, f"%qwen3 --server {wrong} --no-think --max-new-tokens 4 Hi")
    assert masked in message and "wrong-password-123" not in message
    # the URL's key wins over the variable: setting it could not fix this one
    assert "rejected the API key written in the URL" in message, message
    assert "fix the password in the URL" in message and "set $QWEN3" not in message
    right = url.replace("http://", f"http://me:{PROXY_KEY}@")
    ex = ok(rk, f"%qwen3 --server {right} --no-think --max-new-tokens 4 Hi")
    assert masked in ex.stdout and rk.value("_qwen3.device") == masked


def test_stream_cut_midway_error_event_and_malformed_events(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    cut = failed(rk, f"%qwen3 --server {proxy.url('pass')} --max-new-tokens 30 Hi CUT")
    assert cut.startswith(f"the connection to {proxy.url('pass')} dropped after ")
    error = failed(rk, f"%qwen3 --server {proxy.url('error')} --max-new-tokens 30 Hi")
    assert error.startswith(f"the server at {proxy.url('error')} failed mid-answer after ")
    assert "(CUDA error: an illegal memory access)" in error
    assert "(HTTP 500" not in error and "check the server's log" in error
    malformed = failed(rk, f"%qwen3 --server {proxy.url('malformed')} Hi")
    assert malformed.startswith(f"malformed stream from {proxy.url('malformed')}")
    garbled = failed(rk, f"%qwen3 --server {proxy.url('garbled')} --max-new-tokens 30 Hi")
    assert re.fullmatch(
        rf"the server at {re.escape(proxy.url('garbled'))} failed mid-answer after \d+ tokens "
        r"\(an unreadable event\): check the server's log and run the cell again",
        garbled,
    ), garbled


def test_a_call_failing_mid_answer_keeps_the_text_it_streamed(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """The display was emptied when the call raised: the streamed text (in no `_qwen3`, as the
    call failed) was gone; a display still saying `*generating…*` says it stopped instead."""
    ok(rk, "%config Qwen3Magics.stream_interval = 0")
    try:
        line = f"%qwen3 --server {proxy.url('garbled')} --no-think --max-new-tokens 30 Hi"
        ex = rk.run(line)
        assert ex.status == "error"
        updates = answer_updates(ex)
        assert updates and updates[-1].strip(), updates
        # the text kept in _qwen3 keeps its timings too (it read "0.0 tok/s · 0.00 s")
        latency, first, tokens = rk.value(
            "(_qwen3.latency_s, _qwen3.time_to_first_token_s, _qwen3.completion_tokens)"
        )
        assert tokens > 0 and latency > 0 and first is not None and 0 < first <= latency
        gone = rk.run(f"%qwen3 --server {proxy.url('malformed')} Hi")  # nothing streamed
        assert gone.status == "error"
        shown = [
            m["content"]["data"].get("text/markdown")
            for m in gone.of_type("display_data", "update_display_data")
        ]
        assert "*generating…*" in shown and shown[-1] == "*stopped before the first token*", shown
    finally:
        ok(rk, "%config Qwen3Magics.stream_interval = 0.1")


def test_first_token_and_total_timeouts(
    rk: LoggedKernel, proxy: ChaosProxy, openai_server: OpenAIServer
) -> None:
    ok(rk, "os.environ['QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT'] = '1'")
    started = time.monotonic()
    message = failed(rk, f"%qwen3 --server {proxy.url('stall')} Hi")
    assert time.monotonic() - started < 4
    assert message.startswith(f"no first token from {proxy.url('stall')} within 1 s")
    ok(rk, "del os.environ['QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT']")
    ok(rk, "os.environ['QWEN3_JUPYTER_TIMEOUT'] = '0.5'")
    try:  # (left set, it failed the next test's calls)
        message = failed(rk, f"%qwen3 --server {openai_server.url} --max-new-tokens 4000 Hi")
    finally:
        ok(rk, "del os.environ['QWEN3_JUPYTER_TIMEOUT']")
    assert message.startswith(f"{openai_server.url}: the answer took longer than 0.5 s")


@pytest.mark.parametrize("in_stream", [False, True], ids=["http-503", "sglang-error-event"])
def test_a_busy_server_is_retried_for_a_single_call_and_a_batch(
    rk: LoggedKernel, proxy: ChaosProxy, in_stream: bool
) -> None:
    """A 503, or SGLang's full queue: an error event with code 503 inside a 200 stream."""
    proxy.busy_in_stream = in_stream
    try:
        proxy.busy_left = 1
        proxy.busy_retry_after = "0" if in_stream else "2"
        ex = ok(rk, f"%qwen3 --server {proxy.url('pass')} --no-think --max-new-tokens 4 Hi")
        assert proxy.busy_left == 0 and rk.value("_qwen3.completion_tokens") == 4
        if not in_stream:  # a wait the user can see coming, and how to cut it short
            said = "\n".join(str(m["content"]["data"]) for m in ex.of_type("update_display_data"))
            assert "is busy; retry 1 of 2 in 2 s (as it asked) (interrupt to stop)" in said
        proxy.busy_left = 2
        code = (
            f"r = qwen3_jupyter.generate_batch(['a', 'b', 'c'], server={proxy.url('pass')!r}, "
            "concurrency=3, think=False, max_new_tokens=4, progress=False)"
        )
        ok(rk, code)
        assert rk.value("(r.report.completed, r.report.failed, r.report.retries)") == (3, 0, 2)
    finally:
        proxy.busy_in_stream = False
        proxy.busy_retry_after = "0"


def test_a_no_think_answer_a_reasoning_parser_filed_as_reasoning_is_the_answer(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """vLLM's deepseek_r1 parser on Qwen3 sends even a thinking-off answer as `reasoning`."""
    ex = ok(rk, f"%qwen3 --server {proxy.url('r1parser')} --no-think --max-new-tokens 12 Hi")
    answer, thinking = rk.value("(_qwen3.answer, _qwen3.thinking)")
    assert answer and thinking == "", (answer, thinking)
    shown = escape_html(answer)  # the Markdown shows raw HTML (random text has `<`) as typed
    assert any(shown in text for text in answer_updates(ex)), "streamed as the answer"
    ok(rk, f"%qwen3 --server {proxy.url('r1parser')} --think --max-new-tokens 12 Hi")
    assert rk.value("(bool(_qwen3.thinking), _qwen3.answer)") == (True, ""), "thinking stays"


def test_an_answer_a_server_shortened_to_its_context_says_so(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """vLLM 0.32 and later lower max_tokens to the room the context leaves instead of refusing:
    the answer stops early with finish "length", which must not read as --max-new-tokens."""
    line = "--no-think --ignore-eos --max-new-tokens 250 Hi"
    ex = ok(rk, f"%qwen3 --server {proxy.url('limited')} {line}")
    stop, prompt, tokens = rk.value(
        "(_qwen3.stop_reason, _qwen3.prompt_tokens, _qwen3.completion_tokens)"
    )
    assert stop == "context" and tokens < 250 and prompt + tokens == 256, (stop, prompt, tokens)
    assert "stopped at the served context length before --max-new-tokens" in ex.stdout


def test_an_answer_a_server_capped_below_max_new_tokens_is_not_called_the_context(
    rk: LoggedKernel, proxy: ChaosProxy
) -> None:
    """vLLM also lowers max_tokens to the generation config's limit: an early "length" with
    room left in the context was called the context ("shorten the prompt")."""
    proxy.max_tokens_cap = 6
    try:
        ex = ok(rk, f"%qwen3 --server {proxy.url('limited')} --no-think --max-new-tokens 20 Hi")
    finally:
        proxy.max_tokens_cap = None
    stop, prompt, tokens = rk.value(
        "(_qwen3.stop_reason, _qwen3.prompt_tokens, _qwen3.completion_tokens)"
    )
    assert (stop, tokens) == ("capped", 6) and prompt + tokens < 256, (stop, prompt, tokens)
    assert "the server capped the answer below --max-new-tokens" in ex.stdout
    assert "shorten the prompt" not in ex.stdout


# -- the gauge, unload ------------------------------------------------------------------------


def _widget_text(messages: list[dict[str, Any]]) -> str:
    values = []
    for m in messages:
        data = m["content"].get("data", {})
        state = data.get("state", {}) if isinstance(data, dict) else {}
        if isinstance(state.get("value"), str):
            values.append(state["value"])
    return "\n".join(values).replace("\xa0", " ")  # a row's figures keep their units close


def test_gauge_shows_each_servers_row_and_its_metrics(
    rk: LoggedKernel, proxy: ChaosProxy, openai_server: OpenAIServer
) -> None:
    shown = ok(rk, "%qwen3_gauge --interval 0.1\nimport time; time.sleep(0.6)")
    text = _widget_text(shown.messages)
    assert (
        f"{proxy.url('pass')} · vLLM · KV cache 42% · 3 running · 1 waiting · "
        "model memory lives on the server"
    ) in text
    assert f"{openai_server.url} · no /metrics (HTTP 404) · model memory lives on the server" in (
        text
    )
    ok(rk, "%qwen3_gauge --stop")


def test_unload_closes_every_server_connection(rk: LoggedKernel, proxy: ChaosProxy) -> None:
    url = proxy.url("pass")
    ok(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 4 Hi")
    ok(rk, f"conn = SESSION.engines[server_key({url!r})].connection")
    assert rk.value("conn.is_open")
    unloaded = ok(rk, "%qwen3 --unload")
    assert re.search(r"closed the connections? to \d+ servers?", unloaded.stdout)
    assert rk.value("(conn.is_open, len(SESSION.engines))") == (False, 0)
    ok(rk, f"%qwen3 --server {url} --no-think --max-new-tokens 4 Hi")
    ok(rk, f"conn = SESSION.engines[server_key({url!r})].connection")
    ok(rk, "%unload_ext qwen3_jupyter")
    assert rk.value("(conn.is_open, len(SESSION.engines))") == (False, 0)
    ok(rk, "%load_ext qwen3_jupyter")


def test_the_api_key_leaves_no_trace(
    rk: LoggedKernel, proxy: ChaosProxy, openai_server: OpenAIServer, work: Path
) -> None:
    """Every message the kernel sent in this module (outputs, errors, tracebacks), its own
    stdout/stderr, the proxy's and the server's logs, every file written: no key anywhere."""
    ok(rk, "%xmode Verbose")  # tracebacks with every frame's local variables
    raised = rk.run(
        f"qwen3_jupyter.generate_batch(['Hi'], server={proxy.url('auth')!r}, progress=False)"
    )
    assert raised.status == "error" and raised.reply["ename"] == "EngineError"
    ok(rk, "%xmode Context")
    ok(rk, "print(repr(SESSION.engines), repr(_qwen3), repr(list(SESSION.engines.values())))")
    texts = [
        json.dumps(m["content"])
        for ex in rk.executions
        for m in ex.messages
        if m["msg_type"] != "execute_input"  # the cells' own code, as the tests typed it
    ]
    texts += [json.dumps(ex.reply) for ex in rk.executions]
    files = [rk.log, proxy.log, openai_server.log, *work.glob("*.jsonl")]
    texts += [path.read_text(errors="replace") for path in files if path.exists()]
    everything = "\n".join(texts)
    # Controls: the scan covers the places a leak would show.
    assert "Incorrect API key provided: ***" in everything  # the rejected key's echo, masked
    assert "prompt number 19" in everything  # the JSONL
    assert "POST /v1/chat/completions" in everything  # the server's log
    assert raised.error is not None and len(raised.error["traceback"]) > 3
    for secret in (KEY, PROXY_KEY, "wrong-password-123"):
        assert secret not in everything, f"{secret[:6]}… leaked"
