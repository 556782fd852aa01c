"""What went wrong talking to a server, in one line a user can act on, and whether to retry.

The `openai` client raises its own exception types (status errors, connection errors wrapping
the HTTP library's, JSON errors from a stream that is not server-sent events). `classify` turns
each into a `Failure`: a one-line message that names the server (credentials masked) and what
to check, whether retrying could help (429, 502/503/504, a dropped connection), and how long
the server asked us to wait. Text coming from the server is redacted before it is shown: a
server may echo the key it rejected.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any

from .urls import redact

RETRY_STATUSES = frozenset({429, 502, 503, 504})
KEY_HINT = "set $QWEN3_JUPYTER_API_KEY (or $OPENAI_API_KEY) to the key the server was started with"
URL_HINT = "check the URL (it usually ends in /v1, e.g. http://localhost:8000/v1)"


class Failure(Exception):
    """One failed request: `message` is the one line to show; `kind` says which case it is."""

    def __init__(
        self,
        message: str,
        kind: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
        server_says: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.server_says = server_says


@dataclass
class CallContext:
    """What a message needs to know about the call that failed."""

    url: str
    """Masked: safe to show."""
    model: str | None
    secrets: tuple[str | None, ...] = field(default=(), repr=False)
    tokens: int = 0
    connect_timeout: float = 0.0
    first_token_timeout: float = 0.0
    notes: list[str] = field(default_factory=list)


def server_says(body: object, secrets: tuple[str | None, ...] = ()) -> str:
    """The server's own explanation from an error body (vLLM/OpenAI `{"error": {"message"}}`,
    FastAPI `{"detail"}`, `{"message"}`, plain text), one line, short, redacted."""
    text: Any = body
    for _ in range(3):
        if isinstance(text, dict):
            text = text.get("error") or text.get("detail") or text.get("message") or text
            if isinstance(text, dict) and "message" in text:
                text = text["message"]
                break
        else:
            break
    if isinstance(text, (dict, list)):
        text = json.dumps(text)
    line = " ".join(str(text or "").split())
    if line.startswith("<"):
        return "an HTML page"
    line = redact(line, secrets)
    return line if len(line) <= 200 else line[:199] + "…"


def _cause_name(exc: BaseException) -> str:
    """The HTTP library's exception class behind an `openai` connection error ('ConnectError',
    'ReadTimeout', 'RemoteProtocolError'...); by name, so httpx and httpx2 both work."""
    cause: BaseException | None = exc
    names: list[str] = []
    while cause is not None and len(names) < 5:
        names.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    for name in names[1:]:
        if name not in ("APIConnectionError", "APITimeoutError"):
            return name
    return names[0]


def _cause_text(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    text = " ".join(str(cause).split()) if cause is not None else ""
    return text[:160]


def retry_after(headers: Any) -> float | None:
    """Seconds a 429/503 asked us to wait (`Retry-After` as seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def classify(exc: BaseException, ctx: CallContext) -> Failure:
    """The Failure for an exception raised while calling the server."""
    import openai

    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return _status_failure(exc, ctx)
    if isinstance(exc, openai.APIConnectionError):
        return _connection_failure(exc, ctx)
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        says = server_says(exc.body if exc.body is not None else exc.message, ctx.secrets)
        status = stream_status(exc.body)
        if status is not None and ctx.tokens == 0:
            # A refusal met once the stream had begun (SGLang's full queue, a prompt too long
            # for the KV cache; vLLM's retryable internal error) carries its HTTP code: nothing
            # was answered yet, so it is that refusal, with its retry and its re-wording.
            return _failure_for_status(status, says, None, ctx)
        # After tokens, a retryable code (vLLM's RetryableRequestError: 503) still says that
        # asking again can help: a batch item, which starts over, is retried; a single call
        # that already showed text is not (remote.RemoteEngine._call).
        when = f"mid-answer after {ctx.tokens} tokens" if ctx.tokens else "before answering"
        return Failure(
            f"the server at {ctx.url} failed {when} ({says}): "
            "check the server's log and run the cell again",
            "server_error",
            retryable=status in RETRY_STATUSES,
            status=status,
            server_says=says,
        )
    if isinstance(exc, UnicodeEncodeError):
        # Raised before anything is sent: headers are ASCII, and the one header a user writes
        # is the key (a curly quote pasted with it). The error's text holds the key: not shown.
        return Failure(
            f"the API key for {ctx.url} has a non-ASCII character (a quote pasted with it?): "
            "check $QWEN3_JUPYTER_API_KEY, $OPENAI_API_KEY or the password in the URL",
            "auth",
        )
    if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError)) and ctx.tokens > 0:
        # good events came first: the URL is right, the server broke while answering
        return Failure(
            f"the server at {ctx.url} failed mid-answer after {ctx.tokens} tokens (an "
            "unreadable event): check the server's log and run the cell again",
            "server_error",
        )
    if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError)):
        return Failure(
            f"malformed stream from {ctx.url} (not OpenAI chat-completion events, "
            f"{type(exc).__name__}): is it an OpenAI-compatible server? {URL_HINT}",
            "malformed",
        )
    detail = redact(" ".join(str(exc).split())[:160], ctx.secrets)
    return Failure(
        f"calling {ctx.url} failed ({type(exc).__name__}: {detail})",
        "unexpected",
    )


def stream_status(body: object) -> int | None:
    """The HTTP status an error event inside a stream carries (vLLM's and SGLang's `code`),
    or None: OpenAI's own events carry a string code instead."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    code = body.get("code") if isinstance(body, dict) else None
    try:
        status = int(code)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return status if 400 <= status <= 599 else None


def _status_failure(exc: Any, ctx: CallContext) -> Failure:
    says = server_says(exc.body if exc.body is not None else exc.message, ctx.secrets)
    wait = retry_after(getattr(exc.response, "headers", None))
    return _failure_for_status(int(exc.status_code), says, wait, ctx)


def _failure_for_status(status: int, says: str, wait: float | None, ctx: CallContext) -> Failure:
    said = f": {says}" if says else ""
    if status in (401, 403):
        return Failure(
            f"the server at {ctx.url} rejected the API key (HTTP {status}{said}): {KEY_HINT}",
            "auth",
            status=status,
            server_says=says,
        )
    if status == 429:
        message = f"the server at {ctx.url} is rate-limiting (HTTP 429{said}): wait and run again"
        return Failure(message, "busy", retryable=True, retry_after=wait, status=status)
    if status in (502, 503, 504):
        message = (
            f"the server at {ctx.url} is unavailable or overloaded (HTTP {status}{said}): "
            "check that it finished starting, then run again"
        )
        return Failure(message, "busy", retryable=True, retry_after=wait, status=status)
    if status == 404:
        return Failure(
            f"{ctx.url} answered 404 Not Found{said}: {URL_HINT}",
            "not_found",
            status=status,
            server_says=says,
        )
    if status in (400, 422):
        return Failure(
            f"the server at {ctx.url} refused the request (HTTP {status}{said})",
            "bad_request",
            status=status,
            server_says=says,
        )
    return Failure(
        f"the server at {ctx.url} failed (HTTP {status}{said}): check the server's log",
        "server_error",
        status=status,
        server_says=says,
    )


def _connection_failure(exc: BaseException, ctx: CallContext) -> Failure:
    name = _cause_name(exc)
    detail = redact(_cause_text(exc), ctx.secrets)
    why = f" ({detail})" if detail else ""
    if name in ("ConnectTimeout", "PoolTimeout"):
        return Failure(
            f"could not connect to {ctx.url} within {ctx.connect_timeout:g} s: check the host and "
            "port, and that nothing (a firewall, a VPN) drops the connection; "
            "$QWEN3_JUPYTER_CONNECT_TIMEOUT sets the limit",
            "connect_timeout",
        )
    if name in ("ReadTimeout", "TimeoutException", "APITimeoutError"):
        if ctx.tokens == 0:
            message = (
                f"no first token from {ctx.url} within {ctx.first_token_timeout:g} s: the server "
                "may be overloaded or still loading the model — check its log; "
                "$QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT sets the limit"
            )
        else:
            message = (
                f"the stream from {ctx.url} stalled for {ctx.first_token_timeout:g} s after "
                f"{ctx.tokens} tokens: check the server's log"
            )
        return Failure(message, "first_token_timeout")
    if name == "ConnectError" and ctx.url.startswith("https://") and "WRONG_VERSION" in detail:
        plain = "http://" + ctx.url.removeprefix("https://")
        return Failure(  # TLS spoken to a plain-HTTP server (vLLM's and SGLang's default)
            f"{ctx.url} answers in plain HTTP, not HTTPS: use {plain}",
            "unreachable",
        )
    if name == "ConnectError":
        return Failure(
            f"cannot reach {ctx.url}{why}: is the server running, on that host and port?",
            "unreachable",
            retryable=True,
        )
    return Failure(
        f"the connection to {ctx.url} dropped after {ctx.tokens} tokens{why}: the server "
        "restarted or a proxy cut the stream — check the server's log and run again",
        "dropped",
        retryable=True,
    )
