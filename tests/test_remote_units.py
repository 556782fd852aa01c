"""The remote engine's parts that need no server: URLs and secrets, the thinking split, the
request a call sends, error text, Prometheus parsing, timeouts, the batch report; and the edge
cases a real server cannot be made to show on cue (keep-alive comments, a hung server, a
connection lost after the finish, a restart with another model), against a small scripted
server (tests/scripted_server.py), in a second or two each.

The ordinary paths are tested against a real server in tests/test_remote.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from qwen3_jupyter.batching import BatchReport
from qwen3_jupyter.engines import SERVER_ENV, check_server, server_url
from qwen3_jupyter.engines.base import EngineError
from qwen3_jupyter.engines.remote import RemoteEngine, backoff, timeouts_from_env
from qwen3_jupyter.engines.remote_connection import ServerConnection
from qwen3_jupyter.engines.remote_errors import CallContext, retry_after, server_says
from qwen3_jupyter.engines.remote_limits import (
    ContextRefusal,
    answer_cannot_fit,
    context_full,
    context_refusal,
    declared_context,
    fills_context,
    too_long,
)
from qwen3_jupyter.engines.remote_stream import (
    StreamText,
    Timeouts,
    refused_fields,
    request_arguments,
    template_opens_think,
)
from qwen3_jupyter.engines.server_metrics import MetricsReader, ServerLoad, parse_metrics
from qwen3_jupyter.engines.urls import (
    api_base,
    mask_url,
    redact,
    server_root,
    url_password,
    url_query,
)
from qwen3_jupyter.generation import SEED_LIMIT, GenerationOptions, Result
from qwen3_jupyter.server_calls import SERVER_CALLS
from tests.openai_server import VLLM_METRICS, ChaosProxy
from tests.scripted_server import ScriptedServer

SHORT = GenerationOptions(max_new_tokens=8, greedy=True)


def test_api_base_accepts_what_users_paste() -> None:
    assert api_base("http://localhost:8000") == "http://localhost:8000/v1"
    assert api_base("http://localhost:8000/") == "http://localhost:8000/v1"
    assert api_base(" http://host:8000/v1/ ") == "http://host:8000/v1"
    assert api_base("http://host:8000/v1/chat/completions") == "http://host:8000/v1"
    assert api_base("https://gw.example.com/qwen/v1") == "https://gw.example.com/qwen/v1"
    assert api_base("http://user:pw@host:9/v1") == "http://host:9/v1"  # no credential in it
    assert api_base("http://[::1]:8000") == "http://[::1]:8000/v1"
    for bad in ("localhost:8000", "ftp://host/v1", "http://host:port/v1", "http:///v1"):
        with pytest.raises(EngineError, match=r"e\.g\. http://localhost:8000/v1"):
            api_base(bad)


def test_a_server_is_named_where_it_was_set_and_may_omit_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    assert server_url("localhost:8000") == "http://localhost:8000"
    assert server_url(None, " gpu-box.lan:30000/v1 ") == "http://gpu-box.lan:30000/v1"
    assert server_url("[::1]:8000") == "http://[::1]:8000"
    assert server_url("https://h/v1") == "https://h/v1"
    assert server_url("tiny") == "tiny"  # no port: not taken for a host; refused below
    assert server_url("", "http://h:1") is None  # --server "": this kernel's model
    with pytest.raises(EngineError, match=r"^--server 'tiny' is not an http\(s\) URL"):
        check_server("tiny", None)
    with pytest.raises(EngineError, match=r"^%config Qwen3Magics.server = 'ftp://\*\*\*@h/v1'"):
        check_server(None, "ftp://me:pw@h/v1")
    monkeypatch.setenv(SERVER_ENV, "nohost")
    with pytest.raises(EngineError, match=r"^\$QWEN3_JUPYTER_SERVER='nohost' is not"):
        check_server(None, "http://h:1")
    check_server("http://h:1", None)  # the flag is asked first, and is fine
    check_server("localhost:8000", None)


def test_credentials_are_masked_and_redacted() -> None:
    url = "http://alice:s3cr3t-key@host:8000/v1"
    assert mask_url(url) == "http://***@host:8000/v1"
    assert mask_url("http://host:8000/v1") == "http://host:8000/v1"
    assert url_password(url) == "s3cr3t-key"
    assert url_password("http://:sk-abc@host/v1") == "sk-abc"
    assert url_password("http://host/v1") is None
    assert server_root("http://host:8000/v1") == "http://host:8000"
    text = "Incorrect API key provided: s3cr3t-key (s3cr3t-key)"
    assert redact(text, [None, "s3cr3t-key"]) == "Incorrect API key provided: *** (***)"
    assert redact("a b c", ["a"]) == "a b c"  # too short to be a secret worth masking


def _delta(**fields: str) -> SimpleNamespace:
    return SimpleNamespace(**{"content": None, **fields})


def test_thinking_split_from_a_reasoning_field_or_inline_tags() -> None:
    by_field = StreamText()
    for delta in (
        _delta(reasoning_content="Let me "),
        _delta(reasoning_content="think."),
        _delta(content="Blue."),
    ):
        by_field.add(delta)
    assert by_field.split() == ("Let me think.", "Blue.", True)
    assert by_field.display_text(True) == "<think>Let me think.</think>Blue."
    assert by_field.chunks == 3

    newer_vllm = StreamText()
    newer_vllm.add(_delta(reasoning="Hmm"))
    assert newer_vllm.split() == ("Hmm", "", False)
    assert newer_vllm.display_text(True) == "<think>Hmm"

    inline = StreamText()
    for piece in ("<think>\nLet me", " think.\n</think>\n\n", "Blue."):
        inline.add(_delta(content=piece))
    assert inline.split() == ("Let me think.", "Blue.", True)

    prefilled = StreamText()  # the template opened <think>: only the close arrives
    prefilled.add(_delta(content="Let me think.</think>Blue."))
    assert prefilled.split() == ("Let me think.", "Blue.", True)

    # no tags from a model whose template opens <think> (its name says Thinking): its thought
    thinker = StreamText(template_thinks=template_opens_think("Qwen/Qwen3-4B-Thinking-2507"))
    thinker.add(_delta(content="Blue."))
    assert thinker.display_text(True) == "<think>Blue.", "streaming: not a finished answer yet"
    assert thinker.display_text(False) == "Blue."
    thinker.finish = "stop"  # the model's own stop: an answer
    assert thinker.split() == ("", "Blue.", True)
    assert thinker.display_text(True) == "<think></think>Blue."
    thinker.finish = "length"  # the budget ran out before </think>: an unfinished thought
    assert thinker.split() == ("Blue.", "", False) and thinker.thought_cut_off(True)
    assert thinker.split(think=False) == ("", "Blue.", True)
    thinker.finish = None  # interrupted mid-thought: kept as the answer, thinking "finished"
    assert thinker.split() == ("Blue.", "", False) and thinker.thought_cut_off(True)

    # ... from any other model (an Instruct one answers so, thinking on by default): the answer
    plain = StreamText(template_thinks=template_opens_think("Qwen/Qwen3-4B-Instruct-2507"))
    plain.add(_delta(content="Blue."))
    assert plain.display_text(True) == "<think></think>Blue."
    plain.finish = "length"
    assert plain.split() == ("", "Blue.", True) and not plain.thought_cut_off(True)
    assert plain.untagged(True), "untagged all the same (the notice for unclear names)"

    empty_think = StreamText()  # a server's parser reporting the template's empty block
    empty_think.add(_delta(reasoning_content="\n\n"))
    empty_think.add(_delta(content="Blue."))
    assert empty_think.split() == ("", "Blue.", True)

    # vLLM's deepseek_r1 parser on Qwen3 files a --no-think answer as reasoning (no </think>)
    misfiled = StreamText()
    misfiled.add(_delta(reasoning="Blue, "))
    misfiled.add(_delta(reasoning="mostly."))
    assert misfiled.split(think=False) == ("", "Blue, mostly.", True)
    assert misfiled.display_text(False) == "Blue, mostly."
    assert misfiled.split() == ("Blue, mostly.", "", False), "with thinking on it is thinking"
    # ... until the model stops by itself: an Instruct model behind vLLM's qwen3 parser, which
    # files all text before a `</think>` as reasoning (the answer came back blank)
    misfiled.finish = "stop"
    assert misfiled.split() == ("", "Blue, mostly.", True)
    misfiled.finish = "length"
    assert misfiled.split() == ("Blue, mostly.", "", False), "cut off: a thought"


def test_request_carries_thinking_sampling_and_drops_refused_fields() -> None:
    messages = [{"role": "user", "content": "hi"}]
    thinking = request_arguments("m", messages, GenerationOptions(max_new_tokens=7), set())
    assert thinking["stream"] is True and thinking["stream_options"] == {"include_usage": True}
    assert thinking["max_tokens"] == 7
    assert (thinking["temperature"], thinking["top_p"]) == (0.6, 0.95)
    assert thinking["extra_body"] == {
        "chat_template_kwargs": {"enable_thinking": True},
        "top_k": 20,
    }

    options = GenerationOptions(think=False, greedy=True, seed=3, ignore_eos=True)
    greedy = request_arguments("m", messages, options, {"ignore_eos"})
    assert greedy["temperature"] == 0.0 and "top_p" not in greedy and greedy["seed"] == 3
    assert greedy["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}

    said = "Unexpected fields in the request: {'top_k', 'ignore_eos'}"
    assert refused_fields(said) == {"top_k", "ignore_eos"}
    assert refused_fields("model 'top_k' does not exist") == set()


def test_server_error_text_is_one_short_redacted_line() -> None:
    assert server_says({"error": {"message": "The model `x` does not exist."}}) == (
        "The model `x` does not exist."
    )
    assert server_says({"detail": "Not Found"}) == "Not Found"
    assert server_says("multi\nline   text") == "multi line text"
    assert server_says("<html><body>404</body></html>") == "an HTML page"
    assert len(server_says("x" * 1000)) == 200
    assert server_says({"error": "bad key sk-12345"}, ("sk-12345",)) == "bad key ***"
    assert "secret" not in repr(CallContext("http://h/v1", "m", ("secret-key",)))


def test_an_error_event_carrying_an_http_code_is_that_refusal_before_any_token() -> None:
    """vLLM and SGLang send some refusals as an error event inside a 200 stream, with the HTTP
    code they mean (SGLang's full queue: 503; its KV-pool length check: 400). Before any token
    that is the refusal itself: busy is retried, a length refusal re-worded. After tokens it
    failed mid-answer, as before."""
    import openai

    from qwen3_jupyter.engines.remote_errors import classify
    from qwen3_jupyter.engines.remote_http import http_library

    request = http_library(openai).Request("POST", "http://h:30000/v1/chat/completions")

    def event(message: str, code: object, kind: str) -> openai.APIError:
        body = {"object": "error", "message": message, "type": kind, "param": None, "code": code}
        return openai.APIError(message, request, body=body)  # as the client raises it

    full = event("The request queue is full.", 503, "SERVICE_UNAVAILABLE")
    busy = classify(full, CallContext("http://h:30000/v1", "m"))
    assert (busy.kind, busy.retryable, busy.status) == ("busy", True, 503)
    assert "(HTTP 503: The request queue is full.)" in busy.message
    later = classify(full, CallContext("http://h:30000/v1", "m", tokens=12))
    assert later.kind == "server_error" and "mid-answer after 12 tokens" in later.message
    assert later.retryable, "a batch item, which starts over, may ask again"
    too_long = event(
        "Input length (300 tokens) exceeds the maximum allowed length (256 tokens). Use a "
        "shorter input or enable --allow-auto-truncate.",
        400,
        "BAD_REQUEST",
    )
    refused = classify(too_long, CallContext("http://h:30000/v1", "m"))
    assert refused.kind == "bad_request"
    assert context_refusal(refused.server_says) == ContextRefusal(256, 300)
    openai_style = event("The server had an error", "server_error", "server_error")
    assert classify(openai_style, CallContext("u", "m")).kind == "server_error"


def test_why_a_served_answer_stopped() -> None:
    """A "length" before --max-new-tokens is the served context (vLLM 0.32+ shortens instead of
    refusing); only the server's own count can say so."""
    from qwen3_jupyter.engines.remote import stop_reason
    from qwen3_jupyter.engines.remote_stream import Streamed

    assert stop_reason(Streamed(finish_reason="stop"), 100) == "eos"
    assert stop_reason(Streamed(finish_reason="length", completion_tokens=100), 100) == "length"
    full = Streamed(finish_reason="length", prompt_tokens=196, completion_tokens=60)
    assert stop_reason(full, 100, 256) == "context"
    # vLLM also caps max_tokens by the generation config: room was left, so not the context
    capped = Streamed(finish_reason="length", prompt_tokens=10, completion_tokens=60)
    assert stop_reason(capped, 100, 256) == "capped"
    assert stop_reason(capped, 100) == "shortened", "no context length listed: cannot tell"
    uncounted = Streamed(finish_reason="length", completion_tokens=60)
    assert stop_reason(uncounted, 100, 256) == "shortened", "no prompt count: cannot tell"
    assert stop_reason(Streamed(finish_reason="length"), 100) == "length", "no count: unknown"
    assert stop_reason(Streamed(finish_reason="abort"), 100) == "abort"
    assert stop_reason(Streamed(finish_reason="length", interrupted=True), 100) == "interrupted"


@pytest.mark.parametrize(
    ("says", "refusal"),
    [
        (  # vLLM: prompt + max_tokens too long
            "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum "
            "context length is 4096 tokens and your request has 2778 input tokens "
            "(8000 > 4096 - 2778).",
            ContextRefusal(4096, 2778),
        ),
        (  # vLLM: the prompt alone
            "This model's maximum context length is 4096 tokens. However, your request has 5000 "
            "input tokens. Please reduce the length of the input messages.",
            ContextRefusal(4096, 5000),
        ),
        (  # older vLLM
            "This model's maximum context length is 4096 tokens. However, you requested 10778 "
            "tokens (2778 in the messages, 8000 in the completion). Please reduce the length of "
            "the messages or completion.",
            ContextRefusal(4096, 2778),
        ),
        (  # SGLang: prompt + max_tokens too long
            "Requested token count exceeds the model's maximum context length of 131072 tokens. "
            "You requested a total of 140000 tokens: 123616 tokens from the input messages and "
            "16384 tokens for the completion.",
            ContextRefusal(131072, 123616),
        ),
        (  # SGLang: the prompt alone
            "The input (140000 tokens) is longer than the model's context length (131072 tokens).",
            ContextRefusal(131072, 140000),
        ),
        (  # vLLM 0.33: a prompt longer in characters than any fitting prompt
            "This model's maximum context length is 40960 tokens. However, your prompt contains "
            "500000 characters (more than 327680 characters, which is the upper bound for 40960 "
            "input tokens). Please reduce the length of the input prompt.",
            ContextRefusal(40960, None, 500000),
        ),
        (  # vLLM 0.33: the prompt alone, in tokens
            "This model's maximum context length is 256 tokens. However, your prompt contains at "
            "least 257 input tokens, which exceeds this limit even without any output tokens. "
            "Please reduce the length of the input prompt.",
            ContextRefusal(256, 257),
        ),
        (  # vLLM's get_max_tokens
            "Input length (41000) exceeds model's maximum context length (40960).",
            ContextRefusal(40960, 41000),
        ),
        (  # SGLang's KV-pool check, sent inside the stream
            "Input length (300 tokens) exceeds the maximum allowed length (256 tokens). Use a "
            "shorter input or enable --allow-auto-truncate.",
            ContextRefusal(256, 300),
        ),
        ("Unexpected fields in the request: {top_k}", None),
        ("temperature must be non-negative", None),
    ],
)
def test_a_refusal_for_length_is_read_from_each_servers_wording(
    says: str, refusal: ContextRefusal | None
) -> None:
    assert context_refusal(says) == refusal


def test_length_messages_name_the_prompt_the_context_and_the_option() -> None:
    where = "http://h:8000/v1"
    assert too_long(ContextRefusal(4096, 2778), 8000, "Qwen/Qwen3-1.7B", where) == (
        "prompt (2,778 tokens) + --max-new-tokens 8,000 exceeds the 4,096-token context "
        "Qwen/Qwen3-1.7B is served with at http://h:8000/v1: shorten it or lower --max-new-tokens"
    )
    assert too_long(ContextRefusal(4096, 5000), 8, "m", where, chat=True) == (
        "prompt (5,000 tokens) exceeds the 4,096-token context m is served with at "
        "http://h:8000/v1: shorten it (--reset clears a --chat conversation)"
    )
    assert too_long(ContextRefusal(4096, None), 9000, "m", where).startswith(
        "prompt + --max-new-tokens 9,000 exceeds"
    )
    # vLLM 0.33 refuses a prompt by its characters before tokenizing: the prompt alone
    assert too_long(ContextRefusal(40960, None, 500000), 9000, "m", where) == (
        "prompt (500,000 characters) exceeds the 40,960-token context m is served with at "
        "http://h:8000/v1: shorten it"
    )
    assert fills_context("max_tokens must be at least 1, got 0.")
    assert not fills_context("max_tokens must be at least 1, got -3.")
    assert context_full(256, "m", where) == (
        "the prompt fills the whole 256-token context m is served with at http://h:8000/v1, "
        "leaving no room for an answer: shorten it"
    )
    assert answer_cannot_fit(4095, 4096, "m", where) is None
    assert answer_cannot_fit(4096, 4096, "m", where) == (
        "--max-new-tokens 4,096 leaves no room for the prompt in the 4,096-token context m is "
        "served with at http://h:8000/v1: lower --max-new-tokens"
    )


def test_the_declared_context_comes_from_the_model_listing() -> None:
    import openai

    def entry(**extra: object) -> object:
        fields = {"id": "m", "object": "model", "created": 0, "owned_by": "x", **extra}
        return openai.types.Model.model_validate(fields)

    assert declared_context(entry(max_model_len=40960)) == 40960  # vLLM, SGLang
    assert declared_context(entry()) is None  # transformers serve lists none
    assert declared_context(entry(max_model_len=None)) is None
    assert declared_context(entry(max_model_len="n/a")) is None


def test_retry_after_and_backoff() -> None:
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({}) is None and retry_after(None) is None
    assert backoff(1, 2.0) == 2.0 and backoff(1, 999.0) == 30.0
    assert 0.375 <= backoff(1, None) <= 0.625 and backoff(10, None) <= 10.0


def test_timeouts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert timeouts_from_env() == Timeouts()
    monkeypatch.setenv("QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT", "2.5")
    monkeypatch.setenv("QWEN3_JUPYTER_TIMEOUT", "30")
    assert timeouts_from_env() == Timeouts(connect=10.0, first_token=2.5, total=30.0)
    for text in ("soon", "0", "-1", "inf", "nan", "1e300"):  # inf killed the stream watchdog
        monkeypatch.setenv("QWEN3_JUPYTER_CONNECT_TIMEOUT", text)
        with pytest.raises(EngineError, match=rf"CONNECT_TIMEOUT='{text}' is not a number of"):
            timeouts_from_env()
    monkeypatch.setenv("QWEN3_JUPYTER_CONNECT_TIMEOUT", "86400")
    assert timeouts_from_env().connect == 86_400.0


SGLANG_METRICS = """\
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="Qwen/Qwen3-1.7B",tp_rank="0"} 0.25
sglang:token_usage{model_name="Qwen/Qwen3-1.7B",tp_rank="1"} 0.25
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="Qwen/Qwen3-1.7B",tp_rank="0"} 5.0
sglang:num_running_reqs{model_name="Qwen/Qwen3-1.7B",tp_rank="1"} 5.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="Qwen/Qwen3-1.7B",tp_rank="0"} 2.0
"""


def test_prometheus_metrics_of_vllm_and_sglang() -> None:
    vllm = parse_metrics(VLLM_METRICS, "http://h:8000/v1")
    assert (vllm.server, vllm.kv_cache_usage, vllm.running, vllm.waiting) == ("vLLM", 0.42, 3, 1)
    assert vllm.describe() == (
        "vLLM · KV cache 42% · 3 running · 1 waiting · model memory lives on the server"
    )
    two_engines = VLLM_METRICS + VLLM_METRICS.replace('engine="0"', 'engine="1"')
    assert parse_metrics(two_engines, "u").running == 6  # data-parallel engines add up
    sglang = parse_metrics(SGLANG_METRICS, "u")  # the same figure per tensor rank counts once
    assert (sglang.server, sglang.kv_cache_usage, sglang.running, sglang.waiting) == (
        "SGLang",
        0.25,
        5,
        2,
    )
    by_priority = (  # SGLang with priority scheduling: the total, then each priority's share
        "# TYPE sglang:num_running_reqs gauge\n"
        'sglang:num_running_reqs{model_name="m",priority="",tp_rank="0"} 7.0\n'
        'sglang:num_running_reqs{model_name="m",priority="1",tp_rank="0"} 4.0\n'
        'sglang:num_running_reqs{model_name="m",priority="2",tp_rank="0"} 3.0\n'
    )
    assert parse_metrics(by_priority, "u").running == 7, "the total once, not again by priority"
    unknown = parse_metrics(  # NaN before any data (rounding it froze the gauge)
        "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc NaN\n"
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2.0\n",
        "u",
    )
    assert (unknown.kv_cache_usage, unknown.running) == (None, 2)
    assert unknown.describe().startswith("vLLM · 2 running")
    other = parse_metrics("# TYPE http_requests_total counter\nhttp_requests_total 3\n", "u")
    assert other.server is None and other.error == "no KV-cache or request metrics at /metrics"
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus", "u")


def test_metrics_reader_over_http_caches_and_never_raises(tmp_path: Path) -> None:
    proxy = ChaosProxy("http://127.0.0.1:9/v1", "k" * 8, tmp_path / "proxy.log")
    try:
        reader = MetricsReader(f"{proxy.root}/metrics", "http://shown/v1", every=60)
        load = reader.read()
        assert load == ServerLoad("http://shown/v1", "vLLM", 0.42, 3, 1)
        assert reader.read() is load and len(proxy.requests) == 1  # cached
        missing = MetricsReader(f"{proxy.root}/nothing/here", "s").read()
        assert missing.error == "no /metrics (HTTP 404)"
    finally:
        proxy.stop()
    down = MetricsReader(f"{proxy.root}/metrics", "s", timeout=0.2).read()
    assert down.error is not None and down.error.startswith("metrics unreachable")
    assert "model memory lives on the server" in down.describe()


def test_batch_report_for_a_server() -> None:
    report = BatchReport(
        total=20,
        completed=19,
        requested_batch_size=4,
        held_batch_size=4,
        back_offs=(),
        interrupted=False,
        seconds=1.5,
        peak_tensor_bytes=0,
        out_path="r.jsonl",
        failed=1,
        concurrency=4,
        retries=3,
        completion_tokens=1200,
    )
    assert report.summary() == (
        "19/20 prompts · 1.50 s · 1,200 tokens, 800.0 tok/s · 4 concurrent requests · "
        "3 retried · 1 failed (see .error) · written to r.jsonl"
    )
    local = BatchReport(20, 20, 4, 4, (), False, 1.0, 1024, None)
    assert "batch size 4 held" in local.summary() and "peak generation tensors" in local.summary()
    fewer = BatchReport(3, 3, 4, 4, (), False, 1.0, 1024, None)  # read as the size used
    assert "batch size 3 held" in fewer.summary()
    # interrupted with one prompt failed, none answered: the failure is kept and written
    failed_only = dataclasses.replace(report, completed=0, interrupted=True)
    said = failed_only.summary()
    assert "nothing new kept" not in said and "interrupted: the failed results kept" in said


def test_a_server_that_never_accepts_ends_in_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real listening socket whose accept queue is full: the kernel drops further handshakes,
    as a firewall that drops packets does, so only the connect timeout can end the call."""
    import socket
    import time

    from qwen3_jupyter.engines.remote import RemoteEngine

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.3)
    monkeypatch.setenv("QWEN3_JUPYTER_CONNECT_TIMEOUT", "1")
    engine = RemoteEngine(f"http://127.0.0.1:{port}/v1").with_model("m")
    started = time.perf_counter()
    try:
        with pytest.raises(EngineError, match=r"could not connect to .* within 1 s") as caught:
            engine.generate("hi", GenerationOptions(max_new_tokens=2))
        assert "\n" not in str(caught.value)
        assert time.perf_counter() - started < 15
    finally:
        engine.close()
        for sock in (*fillers, server):
            sock.close()


# -- against the scripted server ------------------------------------------------------------


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer(wait=4.0)
    yield server
    server.close()


def _engine(
    url: str, model: str | None = "m1", first_token: float = 30.0, total: float = 30.0
) -> RemoteEngine:
    return RemoteEngine(url, model, timeouts=Timeouts(2.0, first_token, total))


@pytest.mark.parametrize(
    ("route", "limits", "said"),  # limits: (first token, total)
    [
        ("keepalive", (0.6, 30), r"^no first token from \S+ within 0.6 s"),
        ("keepalive", (30, 0.6), r": the answer took longer than 0.6 s "),
        ("slowfirst", (30, 0.6), r": the answer took longer than 0.6 s "),
        ("stallmid", (0.6, 30), r"^the stream from \S+ stalled for 0.6 s after 1 tokens: "),
    ],
    ids=["keepalive-first-token", "keepalive-total", "silent-total", "keepalive-mid-stream"],
)
def test_each_limit_holds_however_the_server_keeps_the_stream_alive(
    scripted: ScriptedServer, route: str, limits: tuple[float, float], said: str
) -> None:
    """SSE keep-alive comments restart the HTTP read timeout, and a silent stream is read only
    when a chunk arrives: both used to run until the server ended (here 4 s; for ever with a
    queueing proxy) and then name the wrong limit."""
    engine = _engine(scripted.url(route), "m1", *limits)
    started = time.perf_counter()
    with pytest.raises(EngineError, match=said):
        engine.generate("hi", SHORT)
    # The limit ended the call, not the server: it keeps the stream going for `wait` (4 s).
    # (A bound, not a count: 0.6 s plus whatever a loaded machine adds stays well below it.)
    assert time.perf_counter() - started < scripted.wait
    posts = [path for method, path in scripted.requests if method == "POST"]
    assert len(posts) == 1, f"one request, one limit: {scripted.requests}"
    if route != "slowfirst":  # the silent route writes nothing more, so cannot notice
        deadline = time.monotonic() + 2
        while route not in scripted.disconnects and time.monotonic() < deadline:
            time.sleep(0.02)
        assert route in scripted.disconnects, "the stream was closed: the server stops"
    engine.close()


def test_a_finished_answer_is_kept_whatever_happens_after_its_finish(
    scripted: ScriptedServer,
) -> None:
    """The finish reason makes the answer whole: a connection lost before the usage chunk and
    `[DONE]`, or a limit passed while they were late, no longer throws it away."""
    dropped = _engine(scripted.url("finishthendrop")).generate("hi", SHORT)
    assert (dropped.answer, dropped.stop_reason) == ("Hello world", "eos")
    assert dropped.completion_tokens == 2  # counted from the stream: no usage figures came
    scripted.wait = 0.8
    late = _engine(scripted.url("lateusage"), first_token=5, total=0.5).generate("hi", SHORT)
    assert (late.answer, late.stop_reason, late.completion_tokens) == ("Hello world", "eos", 2)


def test_a_batch_prompt_queued_behind_its_others_is_not_timed_out(
    scripted: ScriptedServer,
) -> None:
    """A server runs a few requests at once and holds the rest, silent, until a slot frees (vLLM,
    SGLang): prompts queued past the first-token limit failed for good ("2 failed" of 6 at
    concurrency 6 on a server running 2), though the server was streaming the batch's others
    all along. Here 6 prompts, 2 slots, 1.2 s per answer, a 1 s first-token limit."""
    scripted.wait = 1.2
    engine = _engine(scripted.url("queued"), first_token=1.0, total=30)
    started = time.perf_counter()
    results = engine.generate_batch(
        ["a", "b", "c", "d", "e", "f"], SHORT, concurrency=6, progress=False
    )
    took = time.perf_counter() - started
    assert [r.error for r in results] == [None] * 6, [r.error for r in results]
    assert all(r.answer.startswith("HelloHello") for r in results)
    assert took >= 3 * scripted.wait, "control: the last prompts waited past the limit"
    alone = _engine(scripted.url("queued"), first_token=0.5, total=30)
    scripted.slots.acquire()
    scripted.slots.acquire()  # a server whose slots never free: a single call still times out
    try:
        with pytest.raises(EngineError, match=r"^no first token from \S+ within 0.5 s"):
            alone.generate("hi", SHORT)
        stuck = alone.generate_batch(["a", "b"], SHORT, concurrency=2, progress=False)
        assert all(str(r.error).startswith("no first token") for r in stuck), "nothing streams"
    finally:
        scripted.slots.release()
        scripted.slots.release()
    engine.close()
    alone.close()
    # a server that never sends even the headers: the first-token limit still ends the batch
    # (made the whole answer's limit for a batch, it held it 600 s by default)
    silent = _engine(scripted.url("silentchat"), first_token=0.5, total=20)
    started = time.perf_counter()
    results = silent.generate_batch(["a", "b"], SHORT, concurrency=2, progress=False)
    assert time.perf_counter() - started < 10, "waited past the first-token limit"
    assert all(str(r.error).startswith("no first token") for r in results), results
    silent.close()


def _in_thread(engine: RemoteEngine) -> tuple[threading.Thread, list[Result]]:
    results: list[Result] = []
    thread = threading.Thread(
        target=lambda: results.append(engine.generate("hi", SHORT)), name="asker", daemon=True
    )
    thread.start()
    return thread, results


@pytest.mark.parametrize("route", ["slowfirst", "busy"], ids=["no-first-token", "retry-wait"])
def test_stop_ends_a_single_call_in_a_thread_at_once(scripted: ScriptedServer, route: str) -> None:
    """`%qwen3 --stop` reached a call only at its next chunk: one waiting for its first token
    (4 s here, minutes on a loaded server) or sleeping before retrying a busy server (30 s here)
    went on regardless. The stop closes the stream, or wakes the wait, at once."""
    thread, results = _in_thread(_engine(scripted.url(route), first_token=10, total=10))
    deadline = time.monotonic() + 5
    while len(scripted.requests) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # inside the read, or the back-off
    assert SERVER_CALLS.request_stop() == ["a --server call in thread 'asker'"]
    thread.join(1.5)
    assert not thread.is_alive(), "the call went on after --stop"
    assert results[0].stop_reason == "interrupted" and results[0].error is None


def test_a_hung_server_costs_one_timeout_and_says_the_limit(scripted: ScriptedServer) -> None:
    """A server that accepts and never answers cost a timed-out model listing, then a timed-out
    request (2-3 limits before one error), and the listing's message said 'within 0 s'."""
    limit = 0.6
    for model in ("m1", None):
        engine = _engine(scripted.url("hung"), model, first_token=limit, total=30)
        for call in ("generate", "batch"):
            before = len(scripted.requests)
            started = time.perf_counter()
            with pytest.raises(EngineError, match=r"within 0.6 s") as caught:
                if call == "generate":
                    engine.generate("hi", SHORT)
                else:
                    engine.generate_batch(["a", "b"], SHORT, progress=False)
            elapsed = time.perf_counter() - started
            assert "\n" not in str(caught.value)
            time.sleep(0.2)  # a request sent after the error (a retry, a batch item) arrives
            # One timeout is one request that went unanswered: the model listing, after which
            # nothing more is sent (not the chat request, not a batch's items).
            sent = scripted.requests[before:]
            assert len(sent) == 1, f"--model {model}, {call}: {sent}"
            assert sent[0][0] == "GET" and sent[0][1].endswith("/models"), sent
            # A loose bound, for a loaded machine: one limit plus slack, never a count.
            assert elapsed < 3 * limit + 2, f"--model {model}, {call}: {elapsed:.2f} s"
        engine.close()


def test_an_interrupt_while_a_batch_asks_the_server_ends_it_as_interrupted(
    scripted: ScriptedServer,
) -> None:
    """Ctrl-C during the model check before a batch came out as an 80-line traceback; it ends
    the batch as an interrupt during the batch does: nothing finished, report interrupted."""
    engine = _engine(scripted.url("hung"), first_token=3, total=30)
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        results = engine.generate_batch(["a", "b"], SHORT, progress=False)
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the batch")
    finally:
        timer.cancel()
    assert list(results) == [] and results.report.interrupted
    assert results.report.total == 2 and results.report.completed == 0
    assert "interrupted before any prompt finished: nothing new kept" in results.report.summary()
    engine.close()


def test_an_interrupt_keeps_answers_whose_finish_arrived_before_it(
    scripted: ScriptedServer,
) -> None:
    """Streams that had their finish chunk but not yet the usage chunk when the interrupt
    closed them still end as complete answers, a moment after the interrupt: before, the batch
    had already collected and dropped them ("keeps what finished" kept nothing)."""
    engine = _engine(scripted.url("lateusage"), first_token=5, total=30)
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        results = engine.generate_batch(["a", "b"], SHORT, progress=False, concurrency=2)
    finally:
        timer.cancel()
    assert results.report.interrupted
    assert [r.answer for r in results] == ["Hello world"] * 2, list(results)
    assert results.report.completed == 2
    engine.close()


def test_a_second_interrupt_while_a_stopped_batch_collects_loses_nothing(
    tmp_path: Path,
) -> None:
    """A second press of the stop button during the up-to-1 s wait after the first one raised
    out of the batch: every finished answer, already written to the file, was lost to the
    cell (`results` never returned). Both answers here are kept: one finished before the
    interrupts, one during the wait (a worker that does not end at once when cancelled)."""
    from qwen3_jupyter.engines.remote_batch import RetryCounter, run_concurrently

    pressed_twice = threading.Event()

    def answer(index: int, prompt: str) -> Result:
        if index == 1:  # ends only after the second press, inside the batch's wait
            pressed_twice.wait(10)
        return _answered(prompt)

    main = threading.main_thread().ident
    assert main is not None

    def press_twice() -> None:
        for pause in (0.4, 0.3):
            time.sleep(pause)
            signal.pthread_kill(main, signal.SIGINT)
        pressed_twice.set()

    handler = signal.getsignal(signal.SIGINT)
    presser = threading.Thread(target=press_twice)
    presser.start()
    try:
        results = run_concurrently(
            ["a", "b"],
            answer,
            concurrency=2,
            cancel=lambda: None,
            retries=RetryCounter(),
            out=tmp_path / "out.jsonl",
            progress=False,
        )
    except KeyboardInterrupt:  # the regression this test is about: a failure, not a stopped run
        pytest.fail("the second interrupt raised out of the batch")
    finally:
        presser.join()
    assert signal.getsignal(signal.SIGINT) is handler, "the batch left its handler behind"
    assert results.report.interrupted
    assert [r.prompt for r in results] == ["a", "b"]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def _answered(prompt: str) -> Result:
    return Result(
        prompt=prompt,
        answer="ok",
        thinking="",
        model="m1",
        device="server",
        think=False,
        prompt_tokens=1,
        completion_tokens=1,
        latency_s=0.1,
        tokens_per_s=10.0,
        peak_memory_bytes=None,
        memory_kind="server",
        stop_reason="eos",
        thinking_finished=True,
        engine="remote",
    )


def test_a_batch_item_started_after_the_interrupt_sends_nothing(
    scripted: ScriptedServer,
) -> None:
    """A worker that reached its request (a first attempt, or a resend without a refused
    field) just after the interrupt cancelled the batch sent it anyway: a wasted request, and
    one nothing could close before the server's headers came."""
    from qwen3_jupyter.engines.remote_batch import RetryCounter
    from qwen3_jupyter.engines.remote_stream import ActiveStreams, Cancelled

    engine = _engine(scripted.url("ok"))
    active = ActiveStreams()
    active.cancel()
    scripted.bodies.clear()
    with pytest.raises(Cancelled):
        engine._batch_item(
            "a", SHORT, "m1", Timeouts(2, 5, 5), active, RetryCounter(), threading.Event(), print
        )
    assert scripted.bodies == []
    engine.close()


def test_a_key_pasted_with_curly_quotes_is_named_not_the_server(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP headers are ASCII: a key with a curly quote pasted from a document raised
    UnicodeEncodeError, filed as a ValueError ("malformed stream … is it an OpenAI-compatible
    server?"), which sent the user to check the URL. It names the key, and shows none of it."""
    monkeypatch.setenv("QWEN3_JUPYTER_API_KEY", "\u201csk-abc\u201d")
    engine = _engine(scripted.url("ok"))
    with pytest.raises(EngineError) as caught:
        engine.generate("hi", SHORT)
    message = str(caught.value)
    assert message.startswith("the API key for http://127.0.0.1:"), message
    assert "non-ASCII" in message and "$QWEN3_JUPYTER_API_KEY" in message
    assert "sk-abc" not in message and "\n" not in message
    engine.close()


def test_a_server_restarted_with_another_model_is_followed_without_model(
    scripted: ScriptedServer,
) -> None:
    """With --model left out, the model listed first when this kernel first asked was kept for
    ever: after a restart with another model every call failed ('leave --model out for the
    first', though it was), and a batch failed every prompt, listing the models once each."""
    engine = _engine(scripted.url("ok"), None, first_token=5, total=5)
    assert engine.generate("hi", SHORT).model == "m1"
    scripted.model = "m2"
    again = engine.generate("hi", SHORT)
    assert (again.model, again.answer) == ("m2", "Hello world")
    scripted.model = "m3"
    before = len(scripted.requests)
    results = engine.generate_batch(["a", "b", "c", "d"], SHORT, progress=False)
    assert [r.model for r in results] == ["m3"] * 4 and results.report.failed == 0
    listings = [path for method, path in scripted.requests[before:] if method == "GET"]
    assert len(listings) == 1
    named = _engine(scripted.url("ok"), "m3", first_token=5, total=5)
    scripted.model = "m4"
    with pytest.raises(EngineError, match=r"model 'm3' is not served .* \(it serves: m4\)"):
        named.generate("hi", SHORT)  # a model the user named is not swapped behind their back


def test_a_refused_ignore_eos_or_thinking_switch_is_said_once_and_top_k_goes_quietly(
    scripted: ScriptedServer,
) -> None:
    """A server that refuses ignore_eos or chat_template_kwargs (422, `transformers serve`'s
    wording) had them dropped and the request sent again in silence: --ignore-eos and
    --no-think then did nothing, and nothing said so. top_k alone is dropped quietly."""
    url = scripted.url("strict")
    lost = (
        f"{url} refuses `chat_template_kwargs`: --think/--no-think have no effect there",
        f"{url} refuses `ignore_eos`: --ignore-eos has no effect there",
    )
    notes: list[str] = []
    engine = RemoteEngine(url, "m1", timeouts=Timeouts(2.0, 5.0, 5.0), notify=notes.append)
    options = GenerationOptions(max_new_tokens=8, think=False, ignore_eos=True)
    assert engine.generate("hi", options).answer == "Hello world"
    assert [n.split(" (")[0] for n in notes] == list(lost), notes
    assert all("\n" not in n and "vLLM or SGLang" in n for n in notes)
    assert engine.generate("hi", options).answer == "Hello world"
    assert len(notes) == 2, "said once per server"
    engine.close()

    quiet: list[str] = []
    sampled = RemoteEngine(url, "m1", timeouts=Timeouts(2.0, 5.0, 5.0), notify=quiet.append)
    sampled.connection.refused.add("chat_template_kwargs")  # only top_k left to refuse
    assert sampled.generate("hi", GenerationOptions(max_new_tokens=8)).answer == "Hello world"
    assert quiet == [] and sampled.connection.refused == {"top_k", "chat_template_kwargs"}
    sampled.close()

    batch_notes: list[str] = []
    batch = RemoteEngine(url, "m1", timeouts=Timeouts(2.0, 5.0, 5.0), notify=batch_notes.append)
    results = batch.generate_batch(["a", "b", "c"], options, concurrency=3, progress=False)
    assert [r.answer for r in results] == ["Hello world"] * 3
    assert [n.split(" (")[0] for n in batch_notes] == list(lost), "each once, said by the caller"
    batch.close()


def test_a_retryable_error_event_after_tokens_retries_a_batch_item_not_a_single_call(
    scripted: ScriptedServer,
) -> None:
    """vLLM sends a retryable engine error (code 503) as an event, possibly after tokens: a
    batch item starts over, so it is retried; a single call that showed text is not."""
    url = scripted.url("retryable")
    scripted.errors_left = 2
    results = _engine(url).generate_batch(["a"], SHORT, progress=False)
    assert [r.answer for r in results] == ["Hello world"]
    assert (results.report.failed, results.report.retries) == (0, 2)
    scripted.errors_left = 1
    with pytest.raises(EngineError, match=r"failed mid-answer after 2 tokens \(Request failed"):
        _engine(url).generate("hi", SHORT)
    assert scripted.errors_left == 0, "a single call that streamed text is not sent again"


def test_an_error_before_any_token_says_so(scripted: ScriptedServer) -> None:
    """`transformers serve` sends a generation error (a CUDA OOM) as `{"error": "..."}` after
    the role chunk: it read "failed mid-answer after 0 tokens"."""
    with pytest.raises(EngineError) as failed:
        _engine(scripted.url("failfirst")).generate("hi", SHORT)
    assert str(failed.value).startswith(
        f"the server at {scripted.url('failfirst')} failed before answering (CUDA out of memory."
    ), failed.value


def test_an_answer_a_reasoning_parser_filed_as_reasoning_is_the_answer(
    scripted: ScriptedServer,
) -> None:
    """An Instruct model (no `</think>`) behind vLLM's qwen3 parser: the whole answer arrives
    as reasoning and the model stops by itself; it came back blank, "ended while thinking"."""
    result = _engine(scripted.url("parsedanswer")).generate("hi", GenerationOptions())
    assert (result.answer, result.thinking, result.thinking_finished) == ("Hello world", "", True)
    assert result.stop_reason == "eos"


def test_a_transformers_serve_listing_its_cache_gets_a_loaded_or_qwen3_model_or_a_question(
    scripted: ScriptedServer,
) -> None:
    """`transformers serve` without a model lists its whole Hugging Face cache, each entry
    `loaded` or `unloaded`: the first listed was used, whatever it was. A loaded model is
    preferred, then a Qwen3; else the call asks for --model. Any name is answered there."""
    url = scripted.url("cache")

    def asked(model: str | None = None) -> str:
        engine = _engine(url, model, first_token=5, total=5)
        try:
            assert engine.generate("hi", SHORT).answer == "Hello world"
        finally:
            engine.close()
        return [m for kind, m in scripted.requests if kind == "MODEL"][-1]

    smol, big, small = "HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-0.6B"
    scripted.cache = [(smol, "unloaded"), (big, "loaded"), (small, "unloaded")]
    assert asked() == big, "the loaded model"
    scripted.cache = [(smol, "unloaded"), (small, "unloaded")]
    assert asked() == small, "nothing loaded: the Qwen3"
    assert asked("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B", "any name is loaded"
    llama = _engine(url, "meta-llama/Llama-3.2-1B", first_token=5, total=5)
    batch = llama.generate_batch(["a", "b"], SHORT, progress=False)  # checks the name first
    assert [r.answer for r in batch] == ["Hello world"] * 2
    llama.close()
    scripted.cache = [(smol, "unloaded"), (big, "unloaded"), (small, "unloaded")]
    with pytest.raises(EngineError) as caught:
        asked()
    assert str(caught.value) == (
        f"{url} lists 3 models and does not say which to use ({big}, {small}): pass --model "
        f"NAME, e.g. --model {big!r}"
    )
    scripted.cache = [(small, "loaded")]  # pinned (`transformers serve MODEL`): that one
    assert asked() == small


def test_a_query_in_the_url_is_sent_with_every_request(scripted: ScriptedServer) -> None:
    """`http://h/v1?api-version=...` used to become `GET /v1/?api-version=...models`."""
    assert api_base("http://h/ok/v1?api-version=2024-10-21") == "http://h/ok/v1"
    assert url_query("http://h/v1?api-version=2024-10-21&a=") == {
        "api-version": "2024-10-21",
        "a": "",
    }
    engine = _engine(scripted.url("ok") + "?api-version=2024-10-21", None, first_token=5)
    assert engine.generate("hi", SHORT).answer == "Hello world"
    assert scripted.requests == [
        ("GET", "/ok/v1/models?api-version=2024-10-21"),
        ("POST", "/ok/v1/chat/completions?api-version=2024-10-21"),
    ]
    assert "?" not in engine.device  # messages name the server without it (it may hold a key)
    keyed = ServerConnection("http://h/v1?api-version=2024-10-21&api_key=abcd-1234")
    assert "abcd-1234" in keyed.secrets() and "2024-10-21" not in keyed.secrets()


def test_a_results_file_that_fails_midway_stops_the_server_batch_and_keeps_what_finished(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    """As in a kernel's batches: a full disk midway was an OSError out of the batch, every
    finished answer lost. Files may grow to 1,500 bytes here, as the OS limits them (the
    limit is this process's, put back at once)."""
    import resource
    import signal

    from qwen3_jupyter.batching import ResultsFileError

    out = tmp_path / "results.jsonl"
    engine = _engine(scripted.url("ok"), "m1")
    prompts = [f"prompt {n}" for n in range(12)]
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, limits[1]))
    try:
        with pytest.raises(ResultsFileError) as raised:
            engine.generate_batch(prompts, SHORT, progress=False, concurrency=1, out=out)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, ignored)
        engine.close()
    said = str(raised.value)
    assert said.startswith(f"could not append results to {out}: File too large; the run ")
    kept = raised.value.results
    assert kept is not None and 0 < len(kept) < len(prompts)
    assert [r.prompt for r in kept] == prompts[: len(kept)]


def test_metrics_are_asked_with_the_key_of_the_moment(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The /metrics reader kept the key of its first read: a key set after a 401 reached the
    chat calls (looked up per call) and never /metrics, whose row stayed at HTTP 401."""
    for env in ("QWEN3_JUPYTER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(env, raising=False)
    connection = ServerConnection(scripted.url("ok"))
    connection.load()
    monkeypatch.setenv("QWEN3_JUPYTER_API_KEY", "later-key")
    connection.load()
    asked = zip(scripted.requests, scripted.keys, strict=True)
    metrics = [key for (_, path), key in asked if "metrics" in path]
    assert metrics == ["", "later-key"], scripted.requests


def test_a_key_in_the_url_is_sent_decoded_and_never_shown(scripted: ScriptedServer) -> None:
    """A URL must percent-escape '/', '@' and ':' in a key; the escaped form was sent."""
    url = scripted.url("ok").replace("http://", "http://:sk%2Fab%40c-key@")
    assert url_password(url) == "sk/ab@c-key"
    connection = ServerConnection(url)
    assert connection.api_key() == "sk/ab@c-key"
    engine = RemoteEngine(url, "m1", connection=connection)
    assert engine.generate("hi", SHORT).answer == "Hello world"
    assert scripted.keys == ["sk/ab@c-key"] * len(scripted.keys) and scripted.keys
    shown = " ".join((repr(connection), connection.shown, repr(engine), engine.device))
    assert "sk" not in shown and "***@" in shown
    said = "rejected sk/ab@c-key (sk%2Fab%40c-key)"
    assert redact(said, connection.secrets()) == "rejected *** (***)"


def test_metrics_reader_survives_a_garbled_reply() -> None:
    """http.client's own errors (a bad status line, a body cut short) escaped `read()`: the
    gauge logged a traceback on every poll, and its server row stopped for every server."""
    import socket

    replies = {
        "BadStatusLine": b"\x15\x03\x01\x00\x02\x02\x50",
        "IncompleteRead": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nvllm:num",
    }
    for name, reply in replies.items():
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(4)

        def answer(server: socket.socket = server, reply: bytes = reply) -> None:
            with contextlib.suppress(OSError):
                while True:
                    client, _ = server.accept()
                    client.recv(65536)
                    client.sendall(reply)
                    client.close()

        threading.Thread(target=answer, daemon=True).start()
        port = server.getsockname()[1]
        reader = MetricsReader(f"http://127.0.0.1:{port}/metrics", "s", every=60, timeout=2)
        load = reader.read()
        assert load.error == f"metrics unreadable ({name})", load
        assert reader.read() is load, "asked again only after the usual delay"
        server.close()


def test_a_seeded_server_batch_gives_each_prompt_its_own_seed(scripted: ScriptedServer) -> None:
    """One seed sent with every request made six samples of one prompt one answer six times;
    each prompt gets seed + its index, so the run is still reproducible."""
    engine = _engine(scripted.url("ok"))
    scripted.bodies.clear()
    options = GenerationOptions(max_new_tokens=8, seed=7)
    results = engine.generate_batch(["same"] * 3, options, progress=False)
    assert len(results) == 3
    assert sorted(b["seed"] for b in scripted.bodies) == [7, 8, 9]
    scripted.bodies.clear()
    engine.generate("same", options)
    assert [b["seed"] for b in scripted.bodies] == [7]
    engine.close()


def test_a_server_batch_rerun_takes_what_its_results_file_holds(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    """As a local batch does: the prompts an earlier run's lines answer (same prompt, model
    and options) are not sent again; a failed one is."""
    engine = _engine(scripted.url("ok"))
    out = tmp_path / "r.jsonl"
    prompts = ["a", "b", "c", "d"]
    first = engine.generate_batch(prompts, SHORT, out=out, progress=False)
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    failed = json.loads(lines[3])
    failed["error"], failed["answer"] = "HTTP 503", ""
    out.write_text("".join(lines[:2]) + json.dumps(failed) + "\n", encoding="utf-8")
    scripted.bodies.clear()
    again = engine.generate_batch(prompts, SHORT, out=out, progress=False)
    asked = sorted(b["messages"][-1]["content"] for b in scripted.bodies)
    assert asked == sorted(set(prompts) - {json.loads(line)["prompt"] for line in lines[:2]})
    assert [r.answer for r in again] == [r.answer for r in first]
    assert again.report.resumed == 2 and again.report.summary().startswith(
        f"4/4 prompts · 2 taken from {out}, an earlier run's"
    )
    engine.close()


def test_the_largest_seed_seeds_a_server_batch_without_overflowing(
    scripted: ScriptedServer,
) -> None:
    """Before, seed 2**63-1 (accepted) made prompt 1's seed 2**63: a ValueError in the worker
    thread, a traceback, and every finished answer of the batch lost. The seeds wrap round."""
    engine = _engine(scripted.url("ok"))
    scripted.bodies.clear()
    options = GenerationOptions(max_new_tokens=8, seed=SEED_LIMIT)
    results = engine.generate_batch(["same"] * 3, options, progress=False)
    assert len(results) == 3
    assert sorted(b["seed"] for b in scripted.bodies) == [0, 1, SEED_LIMIT]
    engine.close()


def test_on_text_ends_with_the_whole_text_from_a_server(scripted: ScriptedServer) -> None:
    """`on_text` is paced (here once a minute: only the first chunk's call): the chunks after
    the last paced call never reached it, so a display built on it ended short of the answer."""
    texts: list[str] = []
    engine = _engine(scripted.url("ok"))
    result = engine.generate("hi", SHORT, on_text=texts.append, stream_interval=60)
    engine.close()
    assert result.answer == "Hello world"
    assert len(texts) == 2 and texts[-1].endswith("Hello world"), texts


def test_a_memory_budget_or_batch_size_for_a_server_batch_is_named_as_ignored(
    scripted: ScriptedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from qwen3_jupyter.batching import generate_batch

    results = generate_batch(
        ["a"], server=scripted.url("ok"), model="m1", memory_budget="1GiB", progress=False
    )
    assert [r.answer for r in results] == ["Hello world"]
    said = capsys.readouterr()
    assert "memory_budget= applies to a model in this kernel: ignored for a server" in (
        said.out + said.err
    )
    generate_batch(["a"], 8, server=scripted.url("ok"), model="m1", progress=False)
    said = capsys.readouterr()  # it was dropped without a word (the magic names it)
    assert "batch_size= applies to a model in this kernel: ignored for a server" in (
        said.out + said.err
    )
    generate_batch(["a"], server=scripted.url("ok"), model="m1", progress=False)
    said = capsys.readouterr()
    assert "ignored" not in said.out + said.err, "control: nothing given, nothing said"


SCRIPT_ENDS_DURING_A_BATCH = """
import sys, threading, time, qwen3_jupyter
prompts = [f"p{i}" for i in range(12)]
threading.Thread(
    target=lambda: qwen3_jupyter.generate_batch(
        prompts, server=sys.argv[1], model="m1", concurrency=2, progress=False
    ),
    daemon=True,
).start()
time.sleep(1.5)  # the first two requests are in flight, waiting for the server
print("the script's last line", flush=True)
"""


def test_a_script_ends_while_its_daemon_thread_runs_a_server_batch() -> None:
    """The worker threads were joined at exit after draining every queued prompt: a script
    whose daemon thread ran a server batch exited only once the whole batch had been asked
    (hours for a large one). Now it ends with the script; the prompts not yet sent never are."""
    import subprocess
    import sys

    with ScriptedServer(model="m1", wait=3.0) as server:
        ran = subprocess.run(
            [sys.executable, "-c", SCRIPT_ENDS_DURING_A_BATCH, server.url("slowfirst")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        asked = [path for method, path in server.requests if method == "POST"]
    assert ran.returncode == 0 and "the script's last line" in ran.stdout, ran.stderr[-1000:]
    assert len(asked) <= 2, f"{len(asked)} requests: the batch went on after the script ended"


def test_a_batch_of_fewer_prompts_than_its_concurrency_says_how_many_ran_at_once() -> None:
    """Three prompts at concurrency 4 said "4 concurrent requests": never more than three
    were in flight (and only three worker threads are started)."""
    from qwen3_jupyter.engines.remote_batch import RetryCounter, run_concurrently

    in_flight, most = [0], [0]
    lock = threading.Lock()

    def answer(index: int, prompt: str) -> Result:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.2)
        with lock:
            in_flight[0] -= 1
        return _answered(prompt)

    results = run_concurrently(
        ["a", "b", "c"],
        answer,
        concurrency=4,
        cancel=lambda: None,
        retries=RetryCounter(),
        progress=False,
    )
    assert most[0] == 3
    assert "· 3 concurrent requests" in results.report.summary(), results.report.summary()


def test_the_daemon_pool_keeps_order_cancels_the_unstarted_and_refuses_late_work() -> None:
    """The server batch's pool: each future gets its own item's result or exception, the
    items not started when it shuts down are cancelled, and work given after that is refused
    (no worker would ever take it, and its future would never end)."""
    from concurrent.futures import wait

    from qwen3_jupyter.engines.daemon_pool import DaemonPool

    release, started = threading.Event(), threading.Semaphore(0)

    def work(n: int) -> int:
        if n == 1:
            raise ValueError("item 1")
        if n >= 2:
            started.release()
            release.wait(10)
        return n * 10

    pool = DaemonPool(2, "qwen3-test-pool")
    futures = [pool.submit(work, n) for n in range(6)]
    assert started.acquire(timeout=10) and started.acquire(timeout=10)  # 2 and 3 are running
    assert futures[0].result() == 0
    assert isinstance(futures[1].exception(), ValueError)
    pool.shutdown()
    assert all(f.cancelled() for f in futures[4:]), [f._state for f in futures]
    assert not wait(futures[4:], timeout=0).not_done, "cancelled, yet wait() did not see it"
    release.set()
    assert [f.result(timeout=10) for f in futures[2:4]] == [20, 30]  # the running ones end
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(work, 0)


def test_a_stream_that_fails_after_text_keeps_it_and_shows_it_whole(
    scripted: ScriptedServer,
) -> None:
    """A stream cut, stalled or timed out after some text threw that text away (an interrupt
    keeps it), and the display, updated at a pace, showed only part of it: "Hello" of the
    "Hello wor" that came. The error now carries the partial answer, shown whole first."""
    scripted.errors_left = 1
    shown: list[str] = []
    with pytest.raises(EngineError) as failed:
        _engine(scripted.url("retryable")).generate("hi", SHORT, on_text=shown.append)
    kept = failed.value.result
    assert isinstance(kept, Result), "the text that came was thrown away"
    assert (kept.answer, kept.stop_reason, kept.error) == ("Hello wor", "error", str(failed.value))
    assert len(shown) == 2 and shown[-1].endswith("Hello wor"), shown  # paced: "Hello", then
    scripted.wait = 5.0
    with pytest.raises(EngineError, match="stalled") as stalled:
        _engine(scripted.url("stallmid"), first_token=0.6).generate("hi", SHORT)
    assert stalled.value.result.answer == "Hello"
    with pytest.raises(EngineError) as before_any:  # nothing came: nothing to keep
        _engine(scripted.url("failfirst")).generate("hi", SHORT)
    assert before_any.value.result is None


def test_a_finished_answer_waits_only_a_moment_for_its_usage_figures(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the finish reason, a server or proxy sending keep-alives instead of the usage
    figures and `[DONE]` held the call for as long as it kept the connection (40 s, measured):
    no limit applied once the answer was whole. It gets AFTER_FINISH_S more now."""
    from qwen3_jupyter.engines import remote_stream

    monkeypatch.setattr(remote_stream, "AFTER_FINISH_S", 0.5)
    scripted.wait = 20.0
    started = time.monotonic()
    late = _engine(scripted.url("lateusage"), first_token=30, total=30).generate("hi", SHORT)
    assert time.monotonic() - started < 5, "held until the server gave up"
    assert (late.answer, late.stop_reason, late.completion_tokens) == ("Hello world", "eos", 2)


def test_https_to_a_plain_http_server_says_to_use_http(scripted: ScriptedServer) -> None:
    """It said "is the server running, on that host and port?" under an SSL error, of a
    server that was running (vLLM and SGLang serve plain HTTP by default)."""
    url = scripted.url("ok").replace("http://", "https://", 1)
    with pytest.raises(EngineError) as failed:
        _engine(url).generate("hi", SHORT)
    plain = url.replace("https://", "http://", 1)
    assert str(failed.value) == f"{url} answers in plain HTTP, not HTTPS: use {plain}"


def test_a_call_naming_its_model_says_while_it_asks_the_server_for_its_models(
    scripted: ScriptedServer,
) -> None:
    """With `--model` given, the first call still lists the served models (their context
    lengths) and said nothing meanwhile: "generating…" for as long as a hung server took."""
    said: list[str] = []
    engine = _engine(scripted.url("ok"))
    engine.status = said.append
    engine.generate("hi", SHORT)
    assert any(line.endswith("which models it serves…") for line in said), said
    said.clear()
    engine.generate("hi", SHORT)  # listed once per server: not said again
    assert not any("which models" in line for line in said), said


def test_a_server_batch_on_a_results_file_another_run_writes_is_refused(
    scripted: ScriptedServer, tmp_path: Path
) -> None:
    """As a batch in this kernel is (tests/test_batching.py): an overlapping job on the same
    file asked every prompt again and appended its answers beside the other run's."""
    from qwen3_jupyter.batching import ResultsFileError, _JsonLines

    out = tmp_path / "served.jsonl"
    other_run = _JsonLines(out)
    other_run.hold()
    engine = _engine(scripted.url("ok"))
    try:
        with pytest.raises(ResultsFileError, match="is being written by another run now"):
            engine.generate_batch(["a", "b"], SHORT, progress=False, out=out)
    finally:
        other_run.close()
    results = engine.generate_batch(["a", "b"], SHORT, progress=False, out=out)
    assert [r.answer for r in results] == ["Hello world"] * 2
    assert len(out.read_text().splitlines()) == 2
    engine.close()
