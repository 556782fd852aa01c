"""One server as this kernel sees it: its client and connection pool, the key to send, the
models it serves (and the context length each is served with, where the server says), the
optional request fields it refused, and its metrics reader.

The API key is a password written in the URL (the most specific), else $QWEN3_JUPYTER_API_KEY,
else $OPENAI_API_KEY, looked up per call. The client is made once and kept (remade only when
the key changed or after `close()`), so every call reuses its connections. A query written in
the URL (`?api-version=...`) goes with every request and into no message.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from typing import Any

from .remote_errors import CallContext, Failure, classify
from .remote_http import pooled_http_client
from .remote_limits import declared_context
from .remote_stream import Timeouts
from .server_metrics import MetricsReader, ServerLoad
from .urls import api_base, server_root, shown_address, url_password, url_query

API_KEY_ENVS = ("QWEN3_JUPYTER_API_KEY", "OPENAI_API_KEY")
CREDENTIAL_WORDS = ("key", "token", "secret", "sig", "auth", "pass")
"""A query parameter whose name holds one of these is treated as a secret."""
NO_KEY = "EMPTY"
"""What the client sends when no key is set (vLLM's convention; servers without keys ignore it)."""


class ServerConnection:
    """One server: its client and connection pool, the models it serves, the optional request
    fields it refused (so they are not sent again), and its metrics reader."""

    def __init__(self, url: str) -> None:
        self.base_url = api_base(url)
        self.query = url_query(url)
        """Sent with every request (as the client's `default_query`); never shown: a query
        may carry a key too."""
        self._url_key = url_password(url)
        self._url_key_written = url_password(url, decoded=False)
        """The key as the URL spells it (percent-escaped): a secret too."""
        self.shown = shown_address(url) if self._url_key else self.base_url
        self.refused: set[str] = set()
        self._served: tuple[str, ...] | None = None
        self._context: dict[str, int] = {}
        self._owners: set[str] = set()
        self._loaded: frozenset[str] | None = None
        """The models listed as loaded, where the listing says (`transformers serve`'s
        `status`); None where it does not."""
        self._noted: set[str] = set()
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_key: str | None = None
        self._metrics: MetricsReader | None = None
        self._metrics_key: str | None = None

    def __repr__(self) -> str:
        return f"<ServerConnection {self.shown}>"

    def api_key(self) -> str | None:
        """The key to send: a password written in the URL (the most specific), else
        $QWEN3_JUPYTER_API_KEY, else $OPENAI_API_KEY — looked up per call, so a changed
        variable applies at once."""
        if self._url_key:
            return self._url_key
        for env in API_KEY_ENVS:
            value = os.environ.get(env, "").strip()
            if value:
                return value
        return None

    def key_source(self) -> str | None:
        """Where the key sent comes from (the URL's password, or the variable's name), None
        when no key is sent: a rejected key's advice names the one to fix."""
        if self._url_key:
            return "url"
        return next((env for env in API_KEY_ENVS if os.environ.get(env, "").strip()), None)

    def secrets(self) -> tuple[str | None, ...]:
        """Everything that must never appear in a message."""
        keys = (self._url_key, self._url_key_written, *self._query_secrets())
        return (*keys, *(os.environ.get(env) for env in API_KEY_ENVS))

    def _query_secrets(self) -> tuple[str, ...]:
        """Query values that may be credentials (`?key=`, `?sig=`, `?token=`...)."""
        return tuple(
            value
            for name, value in self.query.items()
            if any(word in name.lower() for word in CREDENTIAL_WORDS)
        )

    def client(self) -> Any:
        """The one `openai.OpenAI` client for this server (made on first use, or again after
        the key changed or the connection was closed)."""
        import openai

        key = self.api_key()
        with self._lock:
            if self._client is None or key != self._client_key:
                if self._client is not None:
                    self._client.close()
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=key or NO_KEY,
                    default_query=self.query or None,
                    max_retries=0,
                    http_client=pooled_http_client(openai),
                )
                self._client_key = key
            return self._client

    def first_notice(self, key: str) -> bool:
        """True the first time `key` is asked for this server (any thread): a notice about
        the server is said once per kernel, not once per call or per batch item."""
        with self._lock:
            if key in self._noted:
                return False
            self._noted.add(key)
            return True

    @property
    def is_open(self) -> bool:
        return self._client is not None

    @property
    def listed(self) -> bool:
        """Whether the served models are known (GET /v1/models answered before)."""
        return self._served is not None

    def served_models(self, timeouts: Timeouts, refresh: bool = False) -> tuple[str, ...]:
        """The ids from GET /v1/models (cached); raises Failure when the server cannot say."""
        if self._served is not None and not refresh:
            return self._served
        import openai

        ctx = CallContext(
            self.shown,
            None,
            self.secrets(),
            connect_timeout=timeouts.connect,
            first_token_timeout=timeouts.first_token,
        )
        timeout = openai.Timeout(timeouts.first_token, connect=timeouts.connect)
        try:
            page = self.client().models.list(timeout=timeout)
            served = tuple(str(m.id) for m in page.data)
            context = {str(m.id): declared_context(m) for m in page.data}
            owners = {str(getattr(m, "owned_by", "") or "").lower() for m in page.data}
            statuses = {str(m.id): listed_status(m) for m in page.data}
        except Exception as exc:
            failure = classify(exc, ctx)
            if failure.kind == "first_token_timeout":
                failure = Failure(
                    f"{self.shown} did not answer GET /v1/models within "
                    f"{timeouts.first_token:g} s: the server may be hung, overloaded or still "
                    "loading the model — check its log; $QWEN3_JUPYTER_FIRST_TOKEN_TIMEOUT "
                    "sets the limit",
                    "listing_timeout",
                )
            raise failure from None
        self._served = served
        self._context = {name: limit for name, limit in context.items() if limit is not None}
        self._owners = owners
        if any(status is not None for status in statuses.values()):
            self._loaded = frozenset(m for m, status in statuses.items() if status == "loaded")
        else:
            self._loaded = None
        return served

    def default_model(self) -> tuple[str | None, tuple[str, ...]]:
        """The model a call without --model asks for, from the last listing: (the model, or
        None when the listing leaves it ambiguous; the candidates it was chosen among).

        Most servers list the one model they serve. A `transformers serve` started without a
        model lists every model of its Hugging Face cache, each `loaded` or `unloaded`: the
        first listed is then no better than any, so a loaded model is preferred, then a Qwen3.
        """
        served = self._served or ()
        if self._loaded is None or len(served) <= 1:
            return (served[0] if served else None), served
        candidates = tuple(m for m in served if m in self._loaded) or served
        qwen3 = tuple(m for m in candidates if "qwen3" in m.lower())
        for pool in (candidates, qwen3):
            if len(pool) == 1:
                return pool[0], candidates
        return None, qwen3 or candidates

    def context_length(self, model: str) -> int | None:
        """The context length `model` is served with, as the last GET /v1/models listed it
        (vLLM's and SGLang's `max_model_len`); None when not listed or not asked yet."""
        return self._context.get(model)

    def is_sglang(self) -> bool:
        """Whether the last GET /v1/models came from SGLang (its `owned_by`)."""
        return self._owners == {"sglang"}

    def is_vllm(self) -> bool:
        """Whether the last GET /v1/models came from vLLM (its `owned_by`)."""
        return self._owners == {"vllm"}

    def takes_any_model(self) -> bool:
        """SGLang answers whatever `model` a request names (the name matters only for its
        `base:adapter` LoRA syntax), and a `transformers serve` started without a model loads
        whatever it is asked for (it lists its cache, several models with a `status`; pinned
        to one it lists that one alone, and refuses others): a name not listed is no error."""
        several = self._loaded is not None and len(self._served or ()) > 1
        return self.is_sglang() or several

    def load(self) -> ServerLoad:
        """The server's load from its /metrics (cached; never raises; any thread), asked with
        the key of the moment: a key set after a 401 reached the chat calls, not /metrics."""
        key = self.api_key()
        metrics = self._metrics
        if metrics is None or key != self._metrics_key:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            root = server_root(self.base_url)
            metrics = MetricsReader(f"{root}/metrics", self.shown, headers)
            self._metrics, self._metrics_key = metrics, key
        load = metrics.read()
        if self.is_sglang() and load.error and load.error.startswith("no /metrics"):
            return replace(load, error=f"{load.error}: start SGLang with --enable-metrics")
        return load

    def close(self) -> None:
        """Close the connection pool (idempotent); a later call opens a new one."""
        with self._lock:
            client, self._client, self._client_key = self._client, None, None
        if client is not None:
            client.close()


def listed_status(entry: Any) -> str | None:
    """A GET /v1/models entry's `status` ("loaded", "unloaded": `transformers serve`), or None
    where the server lists none (OpenAI's schema has no such field)."""
    extra = getattr(entry, "model_extra", None)
    status = extra.get("status") if isinstance(extra, dict) else None
    value = status.get("value") if isinstance(status, dict) else status
    return str(value).lower() if isinstance(value, str) else None
