"""The HTTP client behind the one `openai.OpenAI` client per server: connections that survive a
finished stream.

vLLM and SGLang end a stream with `data: [DONE]`, then the end of the chunked body. The sync
`openai` client stops reading at `[DONE]` and closes the response; the HTTP library then closes
the connection, because the end of the body was never read — every call would open a new TCP
(and TLS) connection. (`openai`'s async client drains for 0.1 s for this reason; the sync one
does not.) This transport wrapper does the same for the sync client: closing a response whose
last bytes were `[DONE]` reads what is left (0.1 s and 64 KiB at most), so the connection goes
back to the pool. A response closed any other way (an interrupt, an error) is never drained.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from types import ModuleType
from typing import Any

DONE = b"data: [DONE]"
DRAIN_S = 0.1
DRAIN_BYTES = 64 * 1024
LIMITS = {"max_connections": 1000, "max_keepalive_connections": 100}
"""The `openai` SDK's own connection limits (a custom transport must restate them)."""


def http_library(openai_module: ModuleType) -> ModuleType:
    """The HTTP library (httpx, or its successor httpx2) this `openai` version is built on."""
    for cls in openai_module.DefaultHttpxClient.__mro__:
        root = cls.__module__.split(".")[0]
        if root.startswith("httpx"):
            return importlib.import_module(root)
    raise RuntimeError("cannot tell which HTTP library the openai package uses")


def pooled_http_client(openai_module: ModuleType) -> Any:
    """`openai.DefaultHttpxClient` (the SDK's own defaults) whose connections are kept after
    a stream that ended with `[DONE]`."""
    lib = http_library(openai_module)

    class _DrainAfterDone(lib.SyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any, request: Any) -> None:
            self._inner = inner
            self._request = request
            self._tail = b""

        def __iter__(self) -> Any:
            for chunk in self._inner:
                self._tail = (self._tail + chunk)[-64:]
                yield chunk

        def close(self) -> None:
            if DONE in self._tail:
                self._drain()
            self._inner.close()

        def _drain(self) -> None:
            timeouts = dict(self._request.extensions.get("timeout") or {})
            timeouts["read"] = DRAIN_S
            self._request.extensions["timeout"] = timeouts
            deadline, read = time.monotonic() + DRAIN_S, 0
            with contextlib.suppress(Exception):
                for chunk in self._inner:
                    read += len(chunk)
                    if read > DRAIN_BYTES or time.monotonic() > deadline:
                        break

    class _Transport(lib.BaseTransport):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self._inner = lib.HTTPTransport(limits=lib.Limits(**LIMITS))

        def handle_request(self, request: Any) -> Any:
            response = self._inner.handle_request(request)
            response.stream = _DrainAfterDone(response.stream, request)
            return response

        def close(self) -> None:
            self._inner.close()

    return openai_module.DefaultHttpxClient(transport=_Transport())
