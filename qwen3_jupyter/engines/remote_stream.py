"""One streamed chat completion from an OpenAI-compatible server, reduced to plain values.

`request_arguments` maps GenerationOptions onto the request the way vLLM, SGLang and
`transformers serve` take it. `stream_completion` sends it, reads the server-sent events into a
`StreamText` (plain strings; no response or chunk object outlives the call), hands the text so
far to `on_text` at most every `interval` seconds, and always closes the stream: at the end, on
an error, and on an interrupt or a cancel — closing is what makes the server abort the request.

Thinking arrives one of two ways: in a separate delta field (`reasoning_content`, or
`reasoning` in newer vLLM, when the server runs a reasoning parser), or inline in the content
between `<think>` tags (no parser). `StreamText.split` handles both.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..generation import THINK_END, THINK_START, GenerationOptions, split_thinking
from ..server_calls import SERVER_CALLS
from ..stream_pace import next_wait
from .remote_errors import CallContext, Failure, classify

REASONING_FIELDS = ("reasoning_content", "reasoning")
OPTIONAL_FIELDS = ("top_k", "ignore_eos", "chat_template_kwargs")
"""Request fields beyond OpenAI's own; dropped (and remembered) where a server refuses them."""


class Cancelled(Exception):
    """A batch was interrupted: this request's stream was closed before it finished."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait: for the connection, for the first token (and for any silence after
    it), and for the whole answer."""

    connect: float = 10.0
    first_token: float = 120.0
    total: float = 600.0


def template_opens_think(model: str) -> bool:
    """Whether a served model's chat template writes `<think>` into the prompt itself, so the
    model streams its thought without the opening tag: the Qwen3 Thinking models
    (Qwen3-30B-A3B-Thinking-2507 …) name it. Others (Qwen3, Instruct-2507) write their own
    tags or do not think; a model whose name does not tell gets a notice instead
    (RemoteEngine._note_inline_thinking)."""
    return "thinking" in model.rsplit("/", 1)[-1].lower()


@dataclass
class StreamText:
    """What a stream delivered so far, as plain strings."""

    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    chunks: int = 0
    """Content-bearing chunks: an estimate of tokens when the server sends no usage."""
    finish: str | None = None
    """The stream's finish reason, once it arrived."""
    template_thinks: bool = False
    """The served model's chat template opens `<think>` in the prompt (`template_opens_think`),
    so untagged content is its thought until `</think>` arrives."""

    def add(self, delta: Any) -> bool:
        """Take one chunk's delta; True when it carried text."""
        carried = False
        for name in REASONING_FIELDS:
            value = getattr(delta, name, None)
            if isinstance(value, str) and value:
                self.reasoning.append(value)
                carried = True
                break
        content = getattr(delta, "content", None)
        if isinstance(content, str) and content:
            self.content.append(content)
            carried = True
        if carried:
            self.chunks += 1
        return carried

    def split(self, think: bool = True) -> tuple[str, str, bool]:
        """(thinking, answer, thinking_finished).

        A reasoning field means the server split it: the content is the answer, and thinking
        finished once content arrived. Otherwise `<think>` tags in the content are split as an
        in-kernel engine splits them; content without tags is the answer, unless the budget
        ended it (`thought_cut_off`). With thinking off, text that arrived only as reasoning is
        the answer: a reasoning parser that ignores `enable_thinking` (vLLM's deepseek_r1 on
        Qwen3) files everything there; so is such text the model ended itself ("stop").
        """
        content = "".join(self.content)
        if self.reasoning and not content.strip() and (not think or self.finish == "stop"):
            # Stopped by the model itself with no `</think>`: a model that does not think
            # (Instruct-2507, Qwen3-Coder) behind vLLM's or SGLang's qwen3 parser, which files
            # text without `</think>` as reasoning; its answer came back blank.
            return "", "".join(self.reasoning).strip(), True
        if self.reasoning:
            thinking = "".join(self.reasoning).strip()
            return thinking, content.strip(), bool(content.strip()) or not thinking
        if THINK_END in content or content.lstrip().startswith(THINK_START):
            return split_thinking(content, True)
        if self.thought_cut_off(think):
            return content.strip(), "", False
        return "", content.strip(), True

    def untagged(self, think: bool) -> bool:
        """Thinking asked for, yet only content without `<think>` tags arrived: a thought
        whose opening tag the chat template wrote into the prompt (Thinking-2507, Qwen3.5 on a
        server without a reasoning parser), or the answer of a model that does not think."""
        content = "".join(self.content)
        return (
            think
            and not self.reasoning
            and bool(content.strip())
            and THINK_END not in content
            and not content.lstrip().startswith(THINK_START)
        )

    def thought_cut_off(self, think: bool) -> bool:
        """Untagged text that ended before the model's own stop (the token budget, an
        interrupt, `--stop`) from a model whose template opened `<think>`: its thought, cut
        off before `</think>`, not a finished answer (an interrupted one was kept as the
        answer, thinking "finished"). From any other model it stays the answer: an Instruct
        model's untagged text is its answer, and Qwen3's own default (thinking on) must not
        turn every long Instruct answer into "thinking not finished"."""
        return self.template_thinks and self.finish != "stop" and self.untagged(think)

    def display_text(self, think: bool) -> str:
        """The text so far in the form the stream view splits (`<think>…</think>answer`).
        Untagged text still streaming from a model whose template thinks is shown as thinking
        in progress: until `</think>` or the model's stop nothing says it is an answer."""
        if self.finish is None and self.template_thinks and self.untagged(think):
            return f"{THINK_START}{''.join(self.content).strip()}"
        thinking, answer, finished = self.split(think)
        if not think:
            return answer
        closing = THINK_END if finished else ""
        return f"{THINK_START}{thinking}{closing}{answer}"


@dataclass
class Streamed:
    """How one stream went: its finish reason, the server's token counts, the timings."""

    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_s: float | None = None
    latency_s: float = 0.0
    interrupted: bool = False


def request_arguments(
    model: str, messages: list[dict[str, str]], options: GenerationOptions, refused: set[str]
) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create`: streamed, usage in the last chunk,
    Qwen3's sampling defaults, thinking through `chat_template_kwargs`. Fields a server
    refused before (`refused`) are left out."""
    arguments: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": options.max_new_tokens,
    }
    extra: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": options.think}}
    sampling = options.sampling()
    if sampling.get("do_sample"):
        arguments["temperature"] = sampling["temperature"]
        arguments["top_p"] = sampling["top_p"]
        extra["top_k"] = sampling["top_k"]
    else:
        arguments["temperature"] = 0.0
    if options.seed is not None:
        arguments["seed"] = options.seed
    if options.ignore_eos:
        extra["ignore_eos"] = True
    extra = {k: v for k, v in extra.items() if k not in refused}
    if extra:
        arguments["extra_body"] = extra
    return arguments


def refused_fields(server_says: str) -> set[str]:
    """Which optional fields a 400/422 names ('Unexpected fields in the request: {top_k}')."""
    lowered = server_says.lower()
    if not any(w in lowered for w in ("unexpected", "extra", "unrecognized", "not permitted")):
        return set()
    return {name for name in OPTIONAL_FIELDS if name in server_says}


def abort(stream: Any) -> None:
    """Close a stream now, from any thread: shut the socket down first (a read blocked in
    another thread returns at once, and the server sees the client go), then close. A stream
    already closed is left alone: its connection may be back in the pool, serving another
    request (a stop landing as a call ends runs that call's closer late)."""
    response = getattr(stream, "response", None)
    if getattr(response, "is_closed", False):
        return
    extensions = getattr(response, "extensions", None) or {}
    network = extensions.get("network_stream")
    with contextlib.suppress(Exception):
        sock = network.get_extra_info("socket") if network is not None else None
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        stream.close()


class ActiveStreams:
    """The streams in flight, so a batch interrupt can close them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: set[Any] = set()
        self.cancelled = threading.Event()
        self.text_at = time.monotonic()
        """When text last came on any of the batch's streams (its start, before any)."""

    def got_text(self) -> None:
        """Text came on one of the streams: the server is answering this batch."""
        self.text_at = time.monotonic()

    def add(self, stream: Any) -> None:
        with self._lock:
            self._streams.add(stream)
        if self.cancelled.is_set():
            abort(stream)

    def discard(self, stream: Any) -> None:
        with self._lock:
            self._streams.discard(stream)

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            abort(stream)


AFTER_FINISH_S = 5.0
"""How long a finished answer waits for the server's usage figures and `[DONE]`."""
DEADLINE_GRACE_S = 0.05
"""How early a read timeout may end before its deadline and still count as that deadline."""


class Deadlines:
    """One stream's first-token, silence and total deadlines, kept by a watchdog thread that
    aborts the stream when one passes. Silence: after the first text, no text for as long as
    the first-token limit.

    Why a thread: the HTTP read timeout restarts with every byte, so a server or proxy that
    sends only keep-alive comments (`: keep-alive`) while the request waits never trips it, and
    a check in the read loop runs only when a chunk arrives. After an abort, `expired` says
    which deadline it was, so the error names the limit that was really passed.
    """

    def __init__(self, timeouts: Timeouts, batch: ActiveStreams | None = None) -> None:
        now = time.monotonic()
        self._first_token_s = timeouts.first_token
        self._first_token_at = now + timeouts.first_token
        self._batch = batch
        """The batch this stream is one of: while the server streams text to its other
        requests, one still waiting is queued behind them (vLLM and SGLang send nothing until
        they schedule it), not facing a hung server. Its first-token limit counts from the
        batch's last text: a batch above what the server runs at once lost every queued
        prompt past the limit ("2 failed" of 6 at concurrency 6 on a server running 2)."""
        self._silence_at = self._total_at = now + timeouts.total
        self._cond = threading.Condition()
        self._stream: Any = None
        self._got_text = False
        self._settled = False
        self._finished_at: float | None = None
        self._fired: str | None = None
        watchdog = threading.Thread(target=self._watch, name="qwen3-stream-deadlines", daemon=True)
        watchdog.start()

    def watch(self, stream: Any) -> None:
        """The stream to abort (at once, when a deadline passed while it was being opened)."""
        with self._cond:
            self._stream = stream
            fired = self._fired is not None
        if fired:
            abort(stream)

    def got_text(self) -> None:
        """Text arrived: the silence limit starts again (the first-token one is met)."""
        with self._cond:
            self._silence_at = time.monotonic() + self._first_token_s
            if not self._got_text:  # later texts only move a deadline later: no need to wake
                self._got_text = True
                self._cond.notify()

    def finished(self) -> None:
        """The finish reason came: the answer is whole, and only AFTER_FINISH_S more is given
        to the usage figures and `[DONE]`. A server or proxy that sent keep-alives instead held
        the cell for as long as it kept the connection open (40 s, measured)."""
        with self._cond:
            self._finished_at = time.monotonic() + AFTER_FINISH_S
            self._cond.notify()

    def settle(self) -> None:
        """The call ended: no deadline applies any more."""
        with self._cond:
            self._settled = True
            self._cond.notify()

    def expired(self, grace: float = 0.0) -> str | None:
        """Which deadline passed ("first_token", "silence", "total") or None; none once
        settled, unless the watchdog had already aborted the stream for one."""
        with self._cond:
            if self._fired is not None or self._settled:
                return self._fired
            return self._due(time.monotonic() + grace)

    def _due(self, now: float) -> str | None:
        at, passed = min(self._candidates(), key=lambda c: c[0])
        return passed if now >= at else None

    def _next_at(self) -> float:
        return min(at for at, _ in self._candidates())

    def _candidates(self) -> list[tuple[float, str]]:
        if self._finished_at is not None:
            return [(self._finished_at, "after_finish")]
        if self._got_text:
            waiting = (self._silence_at, "silence")
        elif self._batch is not None:
            batch_alive = self._batch.text_at + self._first_token_s
            waiting = (max(self._first_token_at, batch_alive), "first_token")
        else:
            waiting = (self._first_token_at, "first_token")
        return [waiting, (self._total_at, "total")]  # on a tie, the first named

    def _watch(self) -> None:
        with self._cond:
            while not self._settled:
                passed = self._due(time.monotonic())
                if passed is not None:
                    self._fired, stream = passed, self._stream
                    break
                self._cond.wait(max(0.0, self._next_at() - time.monotonic()))
            else:
                return
        if stream is not None:
            abort(stream)


def stream_completion(
    client: Any,
    arguments: dict[str, Any],
    text: StreamText,
    ctx: CallContext,
    timeouts: Timeouts,
    *,
    think: bool,
    on_text: Callable[[str], None] | None = None,
    interval: float = 0.1,
    on_first_token: Callable[[], None] | None = None,
    active: ActiveStreams | None = None,
    into: Streamed | None = None,
) -> Streamed:
    """`_read_stream`, and on a failure after some text, that text shown whole before the
    error: the display is updated at a pace, so a stream that stalled or dropped showed only
    what the last paced update had (one token of ten), and the rest was never seen. `into`:
    the Streamed to fill, so a caller whose call failed midway still has the timings of what
    came (the partial answer it kept had none)."""
    into = into if into is not None else Streamed()

    def read(shown_by: Callable[[str], None] | None) -> Streamed:
        request = (client, arguments, text, ctx, timeouts, think)
        return _read_stream(*request, shown_by, interval, on_first_token, active, into)

    if on_text is None:
        return read(None)
    shown: list[str] = []

    def showing(now: str) -> None:
        shown[:] = [now]
        on_text(now)

    try:
        return read(showing)
    except Failure:
        rest = text.display_text(think) if text.chunks else None
        if rest is not None and shown[-1:] != [rest]:
            with contextlib.suppress(Exception):  # the failure is what the caller must hear
                on_text(rest)
        raise


def _read_stream(
    client: Any,
    arguments: dict[str, Any],
    text: StreamText,
    ctx: CallContext,
    timeouts: Timeouts,
    think: bool,
    on_text: Callable[[str], None] | None,
    interval: float,
    on_first_token: Callable[[], None] | None,
    active: ActiveStreams | None,
    result: Streamed,
) -> Streamed:
    """Send one streamed request and read it to the end into `text` (and `result`).

    Failures raise `Failure` (one line, classified); the first-token and total limits hold
    however the server behaves (`Deadlines`). An interrupt on the calling thread, or
    `%qwen3 --stop` from another one, closes the stream and returns what arrived, marked
    interrupted. With `active`, a cancel from another thread closes the stream and raises
    `Cancelled`. Once the server sent a finish reason the answer is whole: the usage figures
    and `[DONE]` get AFTER_FINISH_S more, and a connection lost or closed before they came
    returns it (without them).
    """
    import openai

    started = time.perf_counter()
    deadlines = Deadlines(timeouts, active)
    stream: Any = None
    completed = False
    last_emit, wait = 0.0, interval
    last_shown: str | None = None
    callback_error: Exception | None = None
    closers = contextlib.ExitStack()
    try:
        stream = client.chat.completions.create(
            **arguments,
            timeout=openai.Timeout(
                timeouts.total,
                connect=timeouts.connect,
                # before the headers no byte arrives, so no keep-alive can restart this
                read=min(timeouts.first_token, timeouts.total),
                write=timeouts.connect,
                pool=timeouts.total,  # waiting for a free connection is queueing, not failure
            ),
        )
        deadlines.watch(stream)
        if active is not None:
            _body_may_wait(stream, timeouts.total)
        closers.enter_context(SERVER_CALLS.closing(lambda: abort(stream)))
        if active is not None:
            active.add(stream)
        for chunk in stream:
            now = time.perf_counter()
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                result.prompt_tokens = getattr(usage, "prompt_tokens", None)
                result.completion_tokens = getattr(usage, "completion_tokens", None)
            for choice in getattr(chunk, "choices", None) or ():
                if text.add(choice.delta):
                    deadlines.got_text()
                    if active is not None:
                        active.got_text()
                    if result.first_token_s is None:
                        result.first_token_s = now - started
                        if on_first_token is not None:
                            on_first_token()
                if choice.finish_reason:
                    result.finish_reason = text.finish = choice.finish_reason
                    deadlines.finished()
            ctx.tokens = text.chunks
            del chunk
            passed = deadlines.expired() if result.finish_reason is None else None
            if passed is not None:
                raise _timeout(ctx, passed, timeouts)
            if on_text is not None and text.chunks and now - last_emit >= wait:
                last_emit = now
                shown = last_shown = text.display_text(think)
                wait = next_wait(interval, shown)
                try:
                    on_text(shown)
                except Exception as exc:
                    callback_error = exc
                    raise
            SERVER_CALLS.check_stop()  # `%qwen3 --stop` from another thread ends the call here
        completed = True
        if result.finish_reason is None:
            raise _EndedEarly()
    except KeyboardInterrupt:
        result.interrupted = True
    except Failure:
        raise
    except Exception as exc:
        if exc is callback_error:
            raise  # the caller's own on_text failed: their error, as it is, not the server's
        if result.finish_reason is None:
            _raise_for_early_end(exc, result, ctx, timeouts, deadlines, active)
    finally:
        deadlines.settle()
        closers.close()
        if stream is not None:
            if active is not None:
                active.discard(stream)
            if completed:
                # read to the end. openai's stream closed its response at `[DONE]`, mostly
                # before the body's last chunk: the connection is then closed, not pooled
                stream.close()
            else:
                abort(stream)  # the server sees the client go and stops generating
        result.latency_s = time.perf_counter() - started
    if active is not None and active.cancelled.is_set() and result.finish_reason is None:
        raise Cancelled()
    if result.finish_reason is None and not result.interrupted:
        if text.chunks == 0:
            raise Failure(
                f"{ctx.url} sent no chat-completion events (HTTP 200 without a stream): is it an "
                "OpenAI-compatible server? check the URL (it usually ends in /v1)",
                "malformed",
            )
        raise Failure(
            f"the stream from {ctx.url} ended after {text.chunks} tokens without a finish: the "
            "server or a proxy cut it — check the server's log and run again",
            "dropped",
            retryable=True,
        )
    if on_text is not None and text.chunks:  # the whole text once more: the last chunks came
        shown = text.display_text(think)  # between two paced calls
        if shown != last_shown:
            try:
                on_text(shown)
            except KeyboardInterrupt:  # the answer is whole: kept with its figures
                result.interrupted = True
    return result


def _body_may_wait(stream: Any, seconds: float) -> None:
    """A batch's stream, its headers come: the body may now wait in the server's queue behind
    the batch's other requests (vLLM and SGLang send nothing until they schedule it), which
    `Deadlines` judges by the batch's progress. The HTTP read timeout, which held the wait for
    the headers to the first-token limit, becomes the whole answer's for the body: httpx reads
    it from the request when the body is first read. (Where a release does not, the
    first-token limit keeps holding the body too, as it did.)"""
    with contextlib.suppress(AttributeError, KeyError, TypeError):
        stream.response.request.extensions["timeout"]["read"] = seconds


class _EndedEarly(Exception):
    """The stream ended without a finish reason (read to its end)."""


def _raise_for_early_end(
    exc: Exception,
    result: Streamed,
    ctx: CallContext,
    timeouts: Timeouts,
    deadlines: Deadlines,
    active: ActiveStreams | None,
) -> None:
    """Why a stream ended before its finish reason, most specific first: a stop (then it is
    an interrupt, and returns), a batch's cancel, a deadline (the watchdog closed it), or the
    server's or the network's failure. An `_EndedEarly` with none of these returns: the
    caller says what arrived."""
    if SERVER_CALLS.take_stop():
        result.interrupted = True
        return
    if active is not None and active.cancelled.is_set():
        raise Cancelled() from None
    passed = deadlines.expired(grace=DEADLINE_GRACE_S)
    if passed is not None:
        raise _timeout(ctx, passed, timeouts) from None
    if not isinstance(exc, _EndedEarly):
        raise classify(exc, ctx) from None


def _timeout(ctx: CallContext, passed: str, timeouts: Timeouts) -> Failure:
    """The one line for a passed deadline ("first_token", "silence" or "total")."""
    if passed == "silence":
        return Failure(
            f"the stream from {ctx.url} stalled for {timeouts.first_token:g} s after "
            f"{ctx.tokens} tokens: check the server's log; "
            "$QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT sets the limit",
            "first_token_timeout",
        )
    if passed == "first_token":
        return Failure(
            f"no first token from {ctx.url} within {timeouts.first_token:g} s: the server may be "
            "overloaded or still loading the model — check its log; "
            "$QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT sets the limit",
            "first_token_timeout",
        )
    return Failure(
        f"{ctx.url}: the answer took longer than {timeouts.total:g} s ({ctx.tokens} tokens so "
        "far): lower --max-new-tokens or raise $QWEN3_JUPYTER_TIMEOUT",
        "total_timeout",
    )
