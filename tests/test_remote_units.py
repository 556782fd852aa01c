"""The remote engine's parts that need no server: URLs and secrets, the thinking split, the
request a call sends, error text, Prometheus parsing, timeouts, the batch report.

Everything that talks to a server is tested against a real one in tests/test_remote.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from qwen3_jupyter.batching import BatchReport
from qwen3_jupyter.engines.base import EngineError
from qwen3_jupyter.engines.remote import backoff, timeouts_from_env
from qwen3_jupyter.engines.remote_errors import CallContext, retry_after, server_says
from qwen3_jupyter.engines.remote_limits import (
    ContextRefusal,
    answer_cannot_fit,
    context_refusal,
    declared_context,
    too_long,
)
from qwen3_jupyter.engines.remote_stream import (
    StreamText,
    Timeouts,
    refused_fields,
    request_arguments,
)
from qwen3_jupyter.engines.server_metrics import MetricsReader, ServerLoad, parse_metrics
from qwen3_jupyter.engines.urls import api_base, mask_url, redact, server_root, url_password
from qwen3_jupyter.generation import GenerationOptions
from tests.openai_server import VLLM_METRICS, ChaosProxy


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

    plain = StreamText()
    plain.add(_delta(content="Blue."))
    assert plain.split() == ("", "Blue.", True)
    assert plain.display_text(True) == "<think></think>Blue."
    assert plain.display_text(False) == "Blue."

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
    import httpx
    import openai

    from qwen3_jupyter.engines.remote_errors import classify

    request = httpx.Request("POST", "http://h:30000/v1/chat/completions")

    def event(message: str, code: object, kind: str) -> openai.APIError:
        body = {"object": "error", "message": message, "type": kind, "param": None, "code": code}
        return openai.APIError(message, request, body=body)  # as the client raises it

    full = event("The request queue is full.", 503, "SERVICE_UNAVAILABLE")
    busy = classify(full, CallContext("http://h:30000/v1", "m"))
    assert (busy.kind, busy.retryable, busy.status) == ("busy", True, 503)
    assert "(HTTP 503: The request queue is full.)" in busy.message
    later = classify(full, CallContext("http://h:30000/v1", "m", tokens=12))
    assert later.kind == "server_error" and "mid-answer after 12 tokens" in later.message
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
    assert stop_reason(Streamed(finish_reason="length", completion_tokens=60), 100) == "context"
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
            ContextRefusal(40960, None),
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
    monkeypatch.setenv("QWEN3_JUPYTER_CONNECT_TIMEOUT", "soon")
    with pytest.raises(EngineError, match=r"CONNECT_TIMEOUT='soon' is not a positive number"):
        timeouts_from_env()


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
    )
    assert report.summary() == (
        "19/20 prompts · 1.50 s · 4 concurrent requests · 3 retried · 1 failed (see .error) · "
        "written to r.jsonl"
    )
    local = BatchReport(3, 3, 4, 4, (), False, 1.0, 1024, None)
    assert "batch size 4 held" in local.summary() and "peak generation tensors" in local.summary()


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
