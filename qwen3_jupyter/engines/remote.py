"""The remote engine: the same calls answered by an OpenAI-compatible server (vLLM, SGLang,
`transformers serve`) instead of a model in this kernel.

One `ServerConnection` per server per kernel (`remote_connection`) holds one `openai.OpenAI`
client — its connection pool is reused by every call and closed by `%qwen3 --unload` and
`%unload_ext` (never a client per call). `RemoteEngine` is that connection plus the served model
a call asks for. The API key is never shown: messages name the server by its masked URL, text
from the server is redacted, and no repr holds it. The model's memory lives on the server:
Results say so instead of a peak, and the gauge shows the server's own load figures when it
publishes them.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..generation import SEED_LIMIT, GenerationOptions, Result, build_messages
from ..server_calls import SERVER_CALLS
from .base import Engine, EngineError, TextCallback
from .remote_batch import RetryCounter, interrupted_before_start, run_concurrently
from .remote_connection import ServerConnection
from .remote_errors import CallContext, Failure, classify
from .remote_limits import (
    answer_cannot_fit,
    context_full,
    context_refusal,
    fills_context,
    too_long,
)
from .remote_stream import (
    ActiveStreams,
    Cancelled,
    Streamed,
    StreamText,
    Timeouts,
    refused_fields,
    request_arguments,
    stream_completion,
    template_opens_think,
)
from .server_metrics import MEMORY_ELSEWHERE, ServerLoad

if TYPE_CHECKING:
    from ..batching import BatchResults

TIMEOUT_ENVS = {
    "connect": "QWEN3_JUPYTER_CONNECT_TIMEOUT",
    "first_token": "QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT",
    "total": "QWEN3_JUPYTER_TIMEOUT",
}
DEFAULT_CONCURRENCY = 4
CALL_RETRIES = 2
"""A single call retries only a busy server (429/502/503/504), before any text arrived."""
BATCH_ATTEMPTS = 4
"""A batch item is tried this often on 429/5xx-busy, a dropped connection or a refused one."""
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 30.0
MAX_TIMEOUT_S = 86_400.0
LOST_OPTIONS = {
    "ignore_eos": "refuses `ignore_eos`: --ignore-eos has no effect there (answers stop at the "
    "model's end token); use vLLM or SGLang for fixed-length answers",
    "chat_template_kwargs": "refuses `chat_template_kwargs`: --think/--no-think have no effect "
    "there (the model thinks as its chat template decides); use vLLM or SGLang to switch it",
}
"""What a server's refusal of an optional request field costs the user, said once per server."""


def timeouts_from_env(default: Timeouts | None = None) -> Timeouts:
    """Timeouts from $QWEN3_JUPYTER_CONNECT_TIMEOUT, $QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT and
    $QWEN3_JUPYTER_TIMEOUT (seconds), else `default`; read per call so `%env` applies at once."""
    base = default or Timeouts()
    values: dict[str, float] = {}
    for name, env in TIMEOUT_ENVS.items():
        text = os.environ.get(env, "").strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        # inf, nan or 1e300 would end the stream watchdog's wait with an OverflowError, and
        # with it the limit it keeps: a day is the most a notebook call waits.
        if not 0 < value <= MAX_TIMEOUT_S:
            raise EngineError(
                f"${env}={text!r} is not a number of seconds from 0 to {MAX_TIMEOUT_S:,.0f} "
                "(e.g. 30)"
            )
        values[name] = value
    return replace(base, **values)


def seeded_for(options: GenerationOptions, index: int) -> GenerationOptions:
    """The options of a batch's prompt `index`: a seed becomes seed + index. A server seeds
    each request on its own, so one seed for all made every copy of a prompt the same answer
    (six samples of one prompt, one answer six times); the run stays reproducible. Past the
    largest seed it wraps round to 0."""
    if options.seed is None or index == 0:
        return options
    return replace(options, seed=(options.seed + index) % (SEED_LIMIT + 1))


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds before retry `attempt` (1, 2, ...): what the server asked for (capped), else
    0.5 s doubling to 8 s, with jitter so concurrent requests do not retry in lockstep."""
    if retry_after is not None:
        return min(MAX_RETRY_AFTER_S, retry_after)
    return min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)


def stop_reason(streamed: Streamed, max_new_tokens: int, context: int | None = None) -> str | None:
    """Why an answer ended, in the in-kernel engines' words where they share one: "eos" for the
    model's own stop, and the server's reason otherwise ("length", "abort": the server gave up
    on it). A "length" before `max_new_tokens` is the server's own limit — only its count tells
    the two apart: "context" when prompt and answer filled the model's `context` (vLLM 0.32 and
    later shorten an answer to the room left instead of refusing it), else "capped" (vLLM also
    caps max_tokens by the model's generation config); "shortened" where the context or the
    prompt's count is not known."""
    if streamed.interrupted:
        return "interrupted"
    finish = streamed.finish_reason
    if finish == "stop":
        return "eos"
    counted = streamed.completion_tokens
    if finish == "length" and counted is not None and counted < max_new_tokens:
        if context is None or streamed.prompt_tokens is None:
            return "shortened"  # no count to tell the context from a cap of the server's
        return "context" if counted + streamed.prompt_tokens >= context else "capped"
    return finish


def aborted(url: str, tokens: int) -> Failure:
    """A request the server gave up on ("abort": preempted, timed out, shutting down): retried
    in a batch like a dropped connection."""
    return Failure(
        f"the server at {url} aborted the answer after {tokens} tokens: check its log",
        "dropped",
        retryable=True,
    )


class _NotServed(EngineError):
    """The server does not serve the model a call sent, which was its first model when asked:
    it may have been restarted with another since."""


class RemoteEngine(Engine):
    """Chat completions from a server; `model` None means the server's first model."""

    kind = "remote"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        connection: ServerConnection | None = None,
        timeouts: Timeouts | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.connection = connection if connection is not None else ServerConnection(url)
        self._model = model
        self.timeouts = timeouts
        """Fixed timeouts for this engine; None reads the environment per call."""
        self.notify: Callable[[str], None] = notify or (lambda message: None)

    def __repr__(self) -> str:
        model = self._model or "its first model"
        return f"<RemoteEngine {model} at {self.connection.shown}>"

    def with_model(self, model: str | None) -> RemoteEngine:
        """This server asked for `model` (None: the server's first), sharing the connection."""
        if model is None or model == self._model:
            return self
        return RemoteEngine(
            self.connection.base_url,
            model,
            connection=self.connection,
            timeouts=self.timeouts,
            notify=self.notify,
        )

    @property
    def model_name(self) -> str:
        return self._model or self._default_model(self._timeouts())

    @property
    def device(self) -> str:
        return self.connection.shown

    def server_load(self) -> ServerLoad:
        """What the server's /metrics says about its load (for the gauge's server row)."""
        return self.connection.load()

    def close(self) -> None:
        self.connection.close()

    # -- one call -------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        options: GenerationOptions,
        *,
        history: list[dict[str, str]] | None = None,
        on_text: TextCallback | None = None,
        stream_interval: float = 0.1,
        memory_budget: int | None = None,
    ) -> Result:
        """One streamed answer. An interrupt closes the stream at once (the server aborts the
        request) and returns the partial answer; every failure is a one-line EngineError. Run
        in a thread, `%qwen3 --stop` ends it the same way, at once (see `server_calls`)."""
        with SERVER_CALLS.running("a --server call"):
            return self._generate(prompt, options, history, on_text, stream_interval)

    def _generate(
        self,
        prompt: str,
        options: GenerationOptions,
        history: list[dict[str, str]] | None,
        on_text: TextCallback | None,
        stream_interval: float,
    ) -> Result:
        timeouts = self._timeouts()
        text, streamed = StreamText(), Streamed()
        model = self._model or "?"
        try:
            model = self._model or self._default_model(timeouts)
            self._check_fits(model, options, timeouts)
            self._note_ignored_seed(options)
            chat = bool(history)
            messages = build_messages(prompt, options, history)
            self._say(f"waiting for the first token from {self.connection.shown}…")
            call = (messages, options, text, timeouts, on_text, stream_interval, chat, streamed)
            try:
                self._call(model, *call)
            except _NotServed as gone:
                model = self._replacement(model, gone)
                self._call(model, *call)
        except KeyboardInterrupt:
            streamed.interrupted = True
        except EngineError as failed:
            if text.chunks:  # what came before the failure is kept, as an interrupt keeps it
                partial = self._result(prompt, options, model, text, streamed)
                failed.result = replace(partial, stop_reason="error", error=str(failed))
            raise
        self._note_inline_thinking(model, text, options, self.notify)
        return self._result(prompt, options, model, text, streamed)

    def _call(
        self,
        model: str,
        messages: list[dict[str, str]],
        options: GenerationOptions,
        text: StreamText,
        timeouts: Timeouts,
        on_text: TextCallback | None,
        interval: float,
        chat: bool,
        into: Streamed,
    ) -> Streamed:
        """One request, sent again while that can help: without a refused optional field, or
        after a busy server's back-off (a wait `%qwen3 --stop` ends at once). `into` gets what
        the stream delivered, also when it fails midway."""
        retries = 0
        text.template_thinks = template_opens_think(model)
        while True:
            SERVER_CALLS.check_stop()
            ctx = self._context(model, timeouts)
            arguments = request_arguments(model, messages, options, self.connection.refused)
            try:
                return stream_completion(
                    self.connection.client(),
                    arguments,
                    text,
                    ctx,
                    timeouts,
                    think=options.think,
                    on_text=on_text,
                    interval=interval,
                    on_first_token=lambda: self._say(f"streaming from {self.connection.shown}…"),
                    into=into,
                )
            except Failure as failure:
                explained = self._explain(failure, model, timeouts, arguments, chat)
                if explained is None:
                    continue  # a refused optional field was dropped: send again without it
                if explained.kind == "wrong_model" and self._model is None:
                    raise _NotServed(explained.message) from None
                busy = explained.kind == "busy" and text.chunks == 0
                if not busy or retries >= CALL_RETRIES:
                    raise EngineError(explained.message) from None
                retries += 1
                wait = backoff(retries, explained.retry_after)
                asked = " (as it asked)" if explained.retry_after is not None else ""
                self._say(
                    f"{self.connection.shown} is busy; retry {retries} of {CALL_RETRIES} in "
                    f"{wait:.0f} s{asked} (interrupt to stop)…"
                    if wait >= 2
                    else f"{self.connection.shown} is busy; retry {retries} of {CALL_RETRIES}…"
                )
                SERVER_CALLS.wait(wait)

    def _replacement(self, model: str, gone: _NotServed) -> str:
        """The server's first model now, for a call that left --model out and found `model`
        gone (the server was restarted with another): the listing `_explain` just refreshed."""
        fresh = self._default_model(self._timeouts())
        if fresh == model:
            raise EngineError(str(gone)) from None
        self._say(f"{self.connection.shown} now serves {fresh}; asking it instead…")
        return fresh

    # -- batches --------------------------------------------------------------------------------

    def generate_batch(
        self,
        prompts: Sequence[str],
        options: GenerationOptions,
        *,
        batch_size: int = 4,
        concurrency: int | None = None,
        memory_budget: int | None = None,
        out: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> BatchResults:
        """Every prompt as its own request, `concurrency` (default 4) in flight; see
        `remote_batch`. `batch_size` and `memory_budget` concern a model in this kernel. An
        interrupt (or `--stop`) while the server is asked about the model ends the batch as
        one during it does: an interrupted report, here with nothing finished."""
        width = concurrency or DEFAULT_CONCURRENCY
        if width < 1:
            raise EngineError("concurrency must be >= 1")
        timeouts = self._timeouts()
        started = time.perf_counter()
        with SERVER_CALLS.running("a --server batch"):
            try:
                model = self._checked_model(timeouts)
                self._check_fits(model, options, timeouts)
                SERVER_CALLS.check_stop()
            except KeyboardInterrupt:  # while asking the server: nothing sent, nothing finished
                return interrupted_before_start(len(prompts), width, started)
            return self._run_batch(prompts, options, model, timeouts, width, out, progress)

    def _run_batch(
        self,
        prompts: Sequence[str],
        options: GenerationOptions,
        model: str,
        timeouts: Timeouts,
        width: int,
        out: str | os.PathLike[str] | None,
        progress: bool,
    ) -> BatchResults:
        """The batch itself, once the model was checked."""
        self._note_ignored_seed(options)
        self.connection.client()  # made here, shared by the worker threads
        active = ActiveStreams()
        retries = RetryCounter()
        unreachable = threading.Event()

        notes: list[str] = []

        def answer(index: int, prompt: str) -> Result:
            return self._batch_item(
                prompt,
                seeded_for(options, index),
                model,
                timeouts,
                active,
                retries,
                unreachable,
                notes.append,
            )

        self._say(f"sending {len(prompts)} prompts to {self.connection.shown}, {width} at a time…")
        try:
            return run_concurrently(
                [str(p) for p in prompts],
                answer,
                concurrency=width,
                cancel=active.cancel,
                retries=retries,
                out=out,
                progress=progress,
                options=options,
                model=model,
            )
        finally:
            for note in notes:  # said by the calling thread: its notices reach its cell
                self.notify(note)

    def _batch_item(
        self,
        prompt: str,
        options: GenerationOptions,
        model: str,
        timeouts: Timeouts,
        active: ActiveStreams,
        retries: RetryCounter,
        unreachable: threading.Event,
        note: Callable[[str], None],
    ) -> Result:
        """One prompt of a batch, on a worker thread: retried with back-off while retrying
        can help; a failure that stays is a failed Result. Raises only Cancelled. Notices go
        to `note` (the calling thread says them)."""
        messages = build_messages(prompt, options)
        attempt = 0
        while True:
            if active.cancelled.is_set():
                raise Cancelled()  # the batch was interrupted: send nothing more
            text = StreamText(template_thinks=template_opens_think(model))
            ctx = self._context(model, timeouts)
            arguments = request_arguments(model, messages, options, self.connection.refused)
            try:
                streamed = stream_completion(
                    self.connection.client(),
                    arguments,
                    text,
                    ctx,
                    timeouts,
                    think=options.think,
                    active=active,
                )
                if streamed.finish_reason == "abort":
                    raise aborted(ctx.url, text.chunks)
                self._note_inline_thinking(model, text, options, note)
                return self._result(prompt, options, model, text, streamed)
            except Cancelled:
                raise
            except Exception as exc:
                failure = self._explain(
                    classify(exc, ctx), model, timeouts, arguments, listed=True, note=note
                )
            if failure is None:
                continue
            attempt += 1
            give_up = (
                not failure.retryable
                or attempt >= BATCH_ATTEMPTS
                or active.cancelled.is_set()
                or (failure.kind == "unreachable" and unreachable.is_set())
            )
            if give_up:
                if failure.kind == "unreachable":
                    unreachable.set()  # the server is gone: the other items stop retrying
                return self._failed(prompt, options, model, failure.message)
            retries.add()
            if active.cancelled.wait(backoff(attempt, failure.retry_after)):
                raise Cancelled()

    # -- shared ---------------------------------------------------------------------------------

    def _timeouts(self) -> Timeouts:
        return self.timeouts if self.timeouts is not None else timeouts_from_env()

    def _context(self, model: str | None, timeouts: Timeouts) -> CallContext:
        return CallContext(
            self.connection.shown,
            model,
            self.connection.secrets(),
            connect_timeout=timeouts.connect,
            first_token_timeout=timeouts.first_token,
        )

    def _say(self, text: str) -> None:
        if self.status is not None:
            self.status(text)

    def _stop_if_unreachable(self, failure: Failure) -> None:
        """A model listing that failed because the server cannot be reached, refused the key or
        did not answer in time ends the call: the request would fail the same way (a hung
        server would cost a second full timeout before the same error)."""
        if failure.kind in ("unreachable", "connect_timeout", "auth", "listing_timeout"):
            raise EngineError(self._keyed(failure).message) from None

    def _default_model(self, timeouts: Timeouts, refresh: bool = False) -> str:
        """The server's first model (GET /v1/models), as `--model` left out promises."""
        self._say(f"asking {self.connection.shown} which model it serves…")
        try:
            served = self.connection.served_models(timeouts, refresh)
        except Failure as failure:
            self._stop_if_unreachable(failure)
            if failure.kind == "not_found":
                raise EngineError(self._not_openai().message) from None
            raise EngineError(
                f"{failure.message} — asking GET /v1/models for the default model; "
                "pass --model NAME to skip it"
            ) from None
        if not served:
            raise EngineError(
                f"{self.connection.shown} serves no model (GET /v1/models is empty): "
                "pass --model NAME"
            )
        chosen, candidates = self.connection.default_model()
        if chosen is None:
            names = ", ".join(candidates[:4]) + (" …" if len(candidates) > 4 else "")
            raise EngineError(
                f"{self.connection.shown} lists {len(served)} models and does not say which to "
                f"use ({names}): pass --model NAME, e.g. --model {_quoted(candidates[0])}"
            )
        return chosen

    def _checked_model(self, timeouts: Timeouts) -> str:
        """The model for a batch, checked once against what the server serves now (the listing
        is asked again: the server may have been restarted with another model), so a wrong
        name is one error rather than one failed item per prompt."""
        if self._model is None:
            return self._default_model(timeouts, refresh=True)
        try:
            served = self.connection.served_models(timeouts, refresh=True)
        except Failure as failure:
            self._stop_if_unreachable(failure)
            return self._model  # the server cannot list its models: let the requests say
        if served and self._model not in served and not self.connection.takes_any_model():
            raise EngineError(self._wrong_model(self._model, served))
        return self._model

    def _check_fits(self, model: str, options: GenerationOptions, timeouts: Timeouts) -> None:
        """Refuse, before sending, an answer budget that no prompt fits beside, where the server
        lists the model's context length and refuses such a request (SGLang); the listing is
        asked once per server. vLLM (0.32 and later) shortens max_tokens to the room the prompt
        leaves instead: there the request goes, and the "context" stop reason says why the
        answer is short."""
        if not self.connection.listed:  # (said: a hung listing showed "generating…" 30 s)
            self._say(f"asking {self.connection.shown} which models it serves…")
        try:
            self.connection.served_models(timeouts)
        except Failure as failure:
            self._stop_if_unreachable(failure)
            return  # the server cannot list its models: the request itself will say
        limit = self.connection.context_length(model)
        if limit is None or self.connection.is_vllm():
            return
        shown = self.connection.shown
        message = answer_cannot_fit(options.max_new_tokens, limit, model, shown)
        if message is not None:
            raise EngineError(message)

    def _tell_once(self, key: str, message: str, sink: Callable[[str], None]) -> None:
        """Say `message` (about this server) once per kernel; `sink` is where: a batch's
        worker threads collect theirs for the calling thread to say."""
        if self.connection.first_notice(key):
            sink(message)

    def _note_inline_thinking(
        self,
        model: str,
        text: StreamText,
        options: GenerationOptions,
        sink: Callable[[str], None],
    ) -> None:
        """A thought cut off without tags means the server streams thinking as content (its
        template opened `<think>`, no reasoning parser splits it): say how to fix that. Where
        the model's name does not say whether its template thinks, an untagged answer cut off
        by the budget may be such a thought: say so once, and how to be sure."""
        if text.thought_cut_off(options.think):
            self._tell_once(
                "inline_thinking",
                f"{self.connection.shown} sends the model's thinking inside the answer (no "
                "reasoning parser): start the server with --reasoning-parser qwen3 (vLLM, "
                "SGLang) to separate them",
                sink,
            )
        elif (
            text.finish == "length"
            and text.untagged(options.think)
            and "instruct" not in model.lower()
        ):
            self._tell_once(
                "untagged_thinking",
                f"{self.connection.shown}: the answer reached --max-new-tokens without thinking "
                "tags; if this model's template opens <think> itself, this text is its thinking "
                "(a reasoning parser on the server, --reasoning-parser qwen3, separates them)",
                sink,
            )

    def _note_ignored_seed(self, options: GenerationOptions) -> None:
        """SGLang samples without a per-request seed unless it was started deterministic: say so
        once per server, rather than let --seed promise what it cannot keep."""
        if options.seed is None or options.greedy or not self.connection.is_sglang():
            return
        self._tell_once(
            "ignored_seed",
            f"SGLang at {self.connection.shown} ignores --seed unless it was started with "
            "--enable-deterministic-inference: sampled answers may differ from run to run",
            self.notify,
        )

    def _explain(
        self,
        failure: Failure,
        model: str,
        timeouts: Timeouts,
        sent: dict[str, Any],
        chat: bool = False,
        listed: bool = False,
        note: Callable[[str], None] | None = None,
    ) -> Failure | None:
        """Sharpen a failure with what only the server can tell (None: send again).

        A 400/422 naming an optional field we sent (top_k, ignore_eos, ...) drops it for this
        server from now on (`_drop_refused`); one refusing the request's length names the
        option to change. A 400/404 is checked against GET /v1/models: a model the server does
        not serve, or an endpoint that is not an OpenAI API at all, each get their own line.
        `listed`: the listing was just asked (a batch asks it once, not once per failed prompt).
        """
        if failure.kind == "bad_request":
            refused = refused_fields(failure.server_says) & set(sent.get("extra_body") or {})
            if refused:
                self._drop_refused(refused, note or self.notify)
                return None
            if fills_context(failure.server_says):
                limit = self.connection.context_length(model)
                message = context_full(limit, model, self.connection.shown, chat)
                return Failure(message, "too_long", status=failure.status)
            refusal = context_refusal(failure.server_says)
            if refusal is not None:
                budget = int(sent.get("max_tokens") or 0)
                message = too_long(refusal, budget, model, self.connection.shown, chat)
                return Failure(message, "too_long", status=failure.status)
        if failure.kind in ("bad_request", "not_found"):
            try:
                served = self.connection.served_models(timeouts, refresh=not listed)
            except Failure as listing:
                if failure.kind == "not_found" and listing.kind == "not_found":
                    return self._not_openai()
                return failure
            if served and model not in served and not self.connection.takes_any_model():
                return Failure(self._wrong_model(model, served), "wrong_model")
        return self._keyed(failure)

    def _drop_refused(self, refused: set[str], note: Callable[[str], None]) -> None:
        """Leave `refused` out of this server's requests from now on. Without top_k sampling
        barely changes, so that goes quietly; without ignore_eos or chat_template_kwargs an
        option the user gave does nothing, which is said once per server."""
        self.connection.refused |= refused
        for name in sorted(refused & set(LOST_OPTIONS)):
            self._tell_once(
                f"refused:{name}", f"{self.connection.shown} {LOST_OPTIONS[name]}", note
            )

    def _not_openai(self) -> Failure:
        return Failure(
            f"{self.connection.shown} does not answer like an OpenAI-compatible server (404 "
            "Not Found for /models): check the URL (it usually ends in /v1, e.g. "
            "http://localhost:8000/v1)",
            "not_openai",
        )

    def _keyed(self, failure: Failure) -> Failure:
        """A 401/403 says whether a key was sent at all, and where the rejected one came from:
        the URL's password wins over the variables, so "set $QWEN3_JUPYTER_API_KEY" could not
        fix a wrong key written in the URL."""
        if failure.kind != "auth":
            return failure
        source = self.connection.key_source()
        if source is None:
            return Failure(
                f"the server at {self.connection.shown} needs an API key (HTTP "
                f"{failure.status}): set $QWEN3_JUPYTER_API_KEY (or $OPENAI_API_KEY)",
                "auth",
                status=failure.status,
            )
        if source == "url":
            said = f": {failure.server_says}" if failure.server_says else ""
            return Failure(
                f"the server at {self.connection.shown} rejected the API key written in the URL "
                f"(HTTP {failure.status}{said}): fix the password in the URL "
                "(http://:KEY@host/v1), or take it out to send $QWEN3_JUPYTER_API_KEY",
                "auth",
                status=failure.status,
                server_says=failure.server_says,
            )
        return failure

    def _wrong_model(self, model: str, served: tuple[str, ...]) -> str:
        names = ", ".join(served[:5]) + (" …" if len(served) > 5 else "")
        return (
            f"model {model!r} is not served at {self.connection.shown} (it serves: {names}): "
            f"pass --model {_quoted(served[0])}, or leave --model out for the first"
        )

    def _result(
        self,
        prompt: str,
        options: GenerationOptions,
        model: str,
        text: StreamText,
        streamed: Streamed,
    ) -> Result:
        """A plain Result from what arrived: the server's token counts when it sent them (the
        count of streamed chunks otherwise), no memory figures (they are the server's)."""
        thinking, answer, finished = text.split(options.think)
        tokens = streamed.completion_tokens
        if tokens is None or streamed.interrupted:
            tokens = text.chunks
        latency = streamed.latency_s
        limit = self.connection.context_length(model)
        stop = stop_reason(streamed, options.max_new_tokens, limit)
        return Result(
            prompt=prompt,
            answer=answer,
            thinking=thinking,
            model=model,
            device=self.connection.shown,
            think=options.think,
            prompt_tokens=int(streamed.prompt_tokens or 0),
            completion_tokens=int(tokens),
            latency_s=latency,
            tokens_per_s=tokens / latency if latency > 0 else 0.0,
            peak_memory_bytes=None,
            memory_kind=MEMORY_ELSEWHERE,
            stop_reason=stop or "unknown",
            thinking_finished=finished,
            memory_freed_bytes=None,
            engine=self.kind,
            time_to_first_token_s=streamed.first_token_s,
        )

    def _failed(self, prompt: str, options: GenerationOptions, model: str, error: str) -> Result:
        return Result(
            prompt=prompt,
            answer="",
            thinking="",
            model=model,
            device=self.connection.shown,
            think=options.think,
            prompt_tokens=0,
            completion_tokens=0,
            latency_s=0.0,
            tokens_per_s=0.0,
            peak_memory_bytes=None,
            memory_kind=MEMORY_ELSEWHERE,
            stop_reason="error",
            thinking_finished=True,
            engine=self.kind,
            error=error,
        )


def _quoted(name: str) -> str:
    """A served model's name as a message writes it after `--model`: quoted, so a Python
    caller reads `model='qwen3-8b'` (a name with no slash is not recognisably a value)."""
    return repr(name)
