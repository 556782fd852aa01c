"""A small scripted OpenAI-compatible server for the remote engine's edge cases: each route
misbehaves in one way a real server, proxy or network does, in well under a second or two.

Routes (`url(route)` gives `http://127.0.0.1:PORT/<route>/v1`):
- `ok`             answers "Hello world" if the request names the served `model` (404 as vLLM
                   words it otherwise), usage and `[DONE]`;
- `keepalive`      headers, then only SSE comments (`: keep-alive`) for `wait` seconds, as a
                   queueing proxy sends them;
- `stallmid`       one token, then only SSE comments for `wait` seconds (a stalled server
                   behind a proxy that keeps the stream alive);
- `slowfirst`      headers, silence for `wait` seconds, then an answer;
- `busy`           503 with `Retry-After: 30`;
- `finishthendrop` a whole answer with its finish reason, then the connection drops;
- `lateusage`      a whole answer with its finish reason, then the usage and `[DONE]` after
                   `wait` seconds;
- `strict`         refuses a request with a field beyond OpenAI's own (top_k, ignore_eos,
                   chat_template_kwargs) with a 422 in `transformers serve`'s words ("Unexpected
                   fields in the request: {...}"), else answers as `ok` does;
- `retryable`      while `errors_left` > 0 (each request takes one), two tokens then vLLM's
                   retryable engine error as an event (`{"error": {..., "code": 503}}`) and
                   `[DONE]`; then answers as `ok` does;
- `failfirst`      `transformers serve`'s generation error before any token: the role chunk,
                   then `{"error": "<message>"}` (a string, no code), and the stream ends;
- `parsedanswer`   an Instruct model behind vLLM's qwen3 reasoning parser, which files all
                   text before a `</think>` (here: all of it) as `reasoning`: "Hello world"
                   as reasoning deltas, finish "stop", usage and `[DONE]`;
- `cache`          a `transformers serve` started without a model: GET /models lists every
                   model of `cache` (id, "loaded"/"unloaded") with its `status`, and a chat
                   request for any model is answered (the server loads it);
- `hung`           for any request (GET /models too): accepts, reads, never answers.
- `silentchat`     lists its model, then never answers a chat request (not even headers);
- `queued`         runs `slots` requests at a time, as vLLM and SGLang schedule them: the
                   others get their headers, then nothing until a slot frees; each one run
                   streams "Hello world" over `wait` seconds (ten events).
GET `.../models` lists `model` (except on `hung`). Every request's method and path (with its
query) is recorded in `requests`, its key in `keys`, a chat request's JSON body in `bodies`;
a client that went away is recorded in `disconnects`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT_S = 30.0
"""How long the slow routes wait when the test does not say: longer than any test runs."""


def _event(delta: dict[str, str] | None = None, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    data = {"id": "x", "object": "chat.completion.chunk", "created": 0, "choices": [choice]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


USAGE = (
    b'data: {"id": "x", "object": "chat.completion.chunk", "created": 0, "choices": [], '
    b'"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}\n\n'
)
ANSWER = [_event({"role": "assistant", "content": ""}), _event({"content": "Hello"})]
FINISH = _event({"content": " world"}, "stop")
DONE = b"data: [DONE]\n\n"
RETRYABLE = (  # vLLM's RetryableRequestError inside a stream (create_error_response)
    b'data: {"error": {"message": "Request failed; please retry", "type": '
    b'"ServiceUnavailableError", "param": null, "code": 503}}\n\n'
)
LOCK = threading.Lock()


class ScriptedServer:
    """The server, on a free port of 127.0.0.1, in daemon threads; `close()` ends it."""

    def __init__(self, model: str = "m1", wait: float = WAIT_S) -> None:
        self.model = model
        self.wait = wait
        self.errors_left = 0
        self.slots = threading.Semaphore(2)
        self.cache: list[tuple[str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self.keys: list[str] = []
        """The bearer token of every request."""
        self.bodies: list[dict[str, Any]] = []
        """The JSON body of every chat request."""
        self.disconnects: list[str] = []
        self.closing = threading.Event()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.root = f"http://127.0.0.1:{self._http.server_address[1]}"

    def url(self, route: str) -> str:
        return f"{self.root}/{route}/v1"

    def close(self) -> None:
        self.closing.set()
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server_state
        state.requests.append(("GET", self.path))
        state.keys.append(self.headers.get("Authorization", "").removeprefix("Bearer "))
        route = self.path.strip("/").split("/")[0]
        if route == "hung":
            self._hang()
        elif route == "cache" and self.path.split("?")[0].endswith("/models"):
            data = [
                {"owned_by": m.split("/")[0], "id": m, "object": "model", "created": 0}
                | {"status": {"value": status}}
                for m, status in state.cache
            ]
            self._send(200, json.dumps({"object": "list", "data": data}).encode())
        elif self.path.split("?")[0].endswith("/models"):
            entry = {"id": state.model, "object": "model", "created": 0, "owned_by": "vllm"}
            self._send(200, json.dumps({"object": "list", "data": [entry]}).encode())
        else:
            self._send(404, b'{"detail": "Not Found"}')

    def do_POST(self) -> None:
        state = self.server_state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        state.requests.append(("POST", self.path))
        state.bodies.append(body)
        state.keys.append(self.headers.get("Authorization", "").removeprefix("Bearer "))
        route = self.path.strip("/").split("/")[0]
        try:
            getattr(self, f"_{route}")(body)
        except OSError:
            state.disconnects.append(route)

    def _ok(self, body: dict[str, Any]) -> None:
        model = self.server_state.model
        if body["model"] != model:
            says = f"The model `{body['model']}` does not exist."
            error = {"error": {"message": says, "type": "NotFoundError", "code": 404}}
            self._send(404, json.dumps(error).encode())
            return
        self._stream([*ANSWER, FINISH, USAGE, DONE])

    def _strict(self, body: dict[str, Any]) -> None:
        from openai.types.chat.completion_create_params import (
            CompletionCreateParamsStreaming as Params,
        )

        unexpected = set(body) - Params.__required_keys__ - Params.__optional_keys__
        if unexpected:
            detail = f"Unexpected fields in the request: {unexpected}"
            self._send(422, json.dumps({"detail": detail}).encode())
            return
        self._ok(body)

    def _cache(self, body: dict[str, Any]) -> None:
        self.server_state.requests.append(("MODEL", body["model"]))
        self._stream([*ANSWER, FINISH, USAGE, DONE])

    def _retryable(self, body: dict[str, Any]) -> None:
        state = self.server_state
        with LOCK:
            failing = state.errors_left > 0
            state.errors_left -= failing
        if not failing:
            self._ok(body)
            return
        self._stream([*ANSWER, _event({"content": " wor"}), RETRYABLE, DONE])

    def _failfirst(self, body: dict[str, Any]) -> None:
        oom = b'data: {"error": "CUDA out of memory. Tried to allocate 2.00 GiB"}\n\n'
        self._stream([ANSWER[0], oom])

    def _parsedanswer(self, body: dict[str, Any]) -> None:
        reasoning = [_event({"reasoning": "Hello"}), _event({"reasoning": " world"})]
        self._stream([ANSWER[0], *reasoning, _event({}, "stop"), USAGE, DONE])

    def _keepalive(self, body: dict[str, Any]) -> None:
        self._start()
        self._keepalive_for(self.server_state.wait)

    def _keepalive_for(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self._waited(0.1):
            self._chunk(b": keep-alive\n\n")
        self._chunk(b"")

    def _stallmid(self, body: dict[str, Any]) -> None:
        self._start()
        for data in ANSWER:
            self._chunk(data)
        self._keepalive_for(self.server_state.wait)

    def _slowfirst(self, body: dict[str, Any]) -> None:
        self._start()
        if self._waited(self.server_state.wait):
            return
        for data in (*ANSWER, FINISH, USAGE, DONE, b""):
            self._chunk(data)

    def _busy(self, body: dict[str, Any]) -> None:
        self._send(503, b'{"error": {"message": "busy"}}', retry_after="30")

    def _finishthendrop(self, body: dict[str, Any]) -> None:
        self._start()
        for data in (*ANSWER, FINISH):
            self._chunk(data)
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _lateusage(self, body: dict[str, Any]) -> None:
        self._start()
        for data in (*ANSWER, FINISH):
            self._chunk(data)
        self._waited(self.server_state.wait)
        for data in (USAGE, DONE, b""):
            self._chunk(data)

    def _queued(self, body: dict[str, Any]) -> None:
        state = self.server_state
        self._start()
        while not state.slots.acquire(timeout=0.05):
            if state.closing.is_set():
                return
        try:
            self._chunk(ANSWER[0])
            for _ in range(10):
                if self._waited(state.wait / 10):
                    return
                self._chunk(_event({"content": "Hello"}))
            for data in (FINISH, USAGE, DONE, b""):
                self._chunk(data)
        finally:
            state.slots.release()

    def _silentchat(self, body: dict[str, Any]) -> None:
        self._hang()

    def _hung(self, body: dict[str, Any]) -> None:
        self._hang()

    def _hang(self) -> None:
        self.close_connection = True
        self.server_state.closing.wait(WAIT_S)

    def _waited(self, seconds: float) -> bool:
        """Sleep; True when the server is closing (the route should end)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.server_state.closing.wait(min(0.05, deadline - time.monotonic())):
                return True
        return False

    def _send(self, status: int, body: bytes, retry_after: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(body)

    def _start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _stream(self, events: list[bytes]) -> None:
        self._start()
        for data in (*events, b""):
            self._chunk(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
