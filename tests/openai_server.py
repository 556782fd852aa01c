"""What the remote-engine tests run against: a real `transformers serve` of the tiny model
(`qwen3_jupyter.bench._openai_server`), a proxy in front of it that misbehaves on request, and a
kernel whose own stdout/stderr go to a file (so the key test can read everything it printed).

The proxy forwards to the real server and changes one thing per route prefix:
- `/pass/v1/...`      nothing but vLLM's `data: [DONE]` at the end of a stream;
- `/auth/v1/...`      401 unless `Authorization: Bearer <proxy key>`; the 401 body echoes the
                      key it got, as OpenAI's own API does ("Incorrect API key provided: ...");
- `/error/v1/...`     after 3 events the server reports an error event as vLLM does (a 500:
                      `{"error": {..., "type": "InternalServerError", "code": 500}}`, then
                      `data: [DONE]`);
- `/malformed/v1/...` an event that is not JSON;
- `/garbled/v1/...`   after 3 good events, one that is not JSON (a server failing mid-answer);
- `/inline/v1/...`    reasoning moved into the content between <think> tags (a server without a
                      reasoning parser, serving a model that writes its own `<think>`);
- `/prefilled/v1/...` reasoning moved into the content with only the closing `</think>`: a
                      server without a reasoning parser whose chat template opened the block in
                      the prompt (Qwen3-*-Thinking-2507, Qwen3.5), so no `<think>` is streamed;
                      the model is listed (and asked for) as `<served>-Thinking-2507`;
- `/untagged/v1/...`  the same stream under the served model's own name (a name that does not
                      say whether its template thinks);
- `/stall/v1/...`     headers, then silence (no first token);
- `/limited/v1/...`   vLLM 0.33 started with `--max-model-len 256`: GET /v1/models lists
                      `max_model_len` (`owned_by: "vllm"`); a chat request's `max_tokens` is
                      lowered to the room its prompt (counted with the served model's own
                      tokenizer and chat template) leaves, a prompt that fills the context is
                      refused ("max_tokens must be at least 1, got 0") and a longer one too, in
                      vLLM's words (renderers/params.py);
- `/sglang/v1/...`    SGLang with a 256-token context: its model listing (`owned_by: "sglang"`,
                      `max_model_len`); it answers any model name, and refuses a prompt that
                      fills the context, or prompt + `max_tokens` beyond it, in SGLang's words
                      (tokenizer_manager.py);
- `/r1parser/v1/...`  vLLM's deepseek_r1 reasoning parser on Qwen3: everything arrives in the
                      `reasoning` field, the answer of a thinking-off request too;
- `.../metrics`       a vLLM-style Prometheus text;
- anything else       404 with an HTML page (a web server that is not an OpenAI API).
Only chat requests (POST) misbehave; GET /v1/models is forwarded, after the key check on
`/auth/`. On every route, a request whose prompt contains CUT loses its connection after 3
events, and the first `busy_left` requests get 503 with Retry-After `busy_retry_after` (0)
(with `busy_in_stream`, SGLang's way: a 200 stream whose one event is an error with code
503), and with `max_tokens_cap` set every chat request's `max_tokens` is lowered to it (vLLM
capping it by the model's generation config, `max_new_tokens` there). `stop()` closes the port
(a server that went away). Client ports and disconnects are recorded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qwen3_jupyter.bench._kernel import Kernel

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-1.7B"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-1.7B"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-1.7B"} 0.42
"""

THINKING_SUFFIX = "-Thinking-2507"
"""How `/prefilled/` names the served model: a name that says its template opens `<think>`."""

ROUTES = (
    "pass",
    "auth",
    "error",
    "malformed",
    "garbled",
    "inline",
    "prefilled",
    "untagged",
    "stall",
    "limited",
    "r1parser",
    "sglang",
)
QUEUE_FULL = {  # SGLang's serving_chat: a scheduler abort with a status code, as an error event
    "error": {
        "object": "error",
        "message": "The request queue is full.",
        "type": "SERVICE_UNAVAILABLE",
        "param": None,
        "code": 503,
    }
}
ENGINE_ERROR = {  # vLLM's create_error_response for an internal error during generation
    "error": {
        "message": "CUDA error: an illegal memory access",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}
SERVED_CONTEXT = 256
"""The context length the /limited/ route's server is 'started with'."""


class ChaosProxy:
    """A threaded HTTP proxy to `upstream` (an OpenAI base URL) with the routes above."""

    def __init__(self, upstream: str, key: str, log: Path, checkpoint: Path | None = None) -> None:
        parts = urlsplit(upstream)
        self.checkpoint = checkpoint
        self._tokenizer: Any = None
        self._served: str | None = None
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = int(parts.port or 80)
        self.key = key
        self.log = log
        self.busy_left = 0
        self.busy_retry_after = "0"
        """What a 503 asks for in Retry-After (seconds)."""
        self.busy_in_stream = False
        self.max_tokens_cap: int | None = None
        self.busy_bodies: list[bytes] = []
        self.requests: list[str] = []
        self.client_ports: list[int] = []
        self.disconnects: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}/{route}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def note(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)
            with self.log.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def enter(self, port: int) -> None:
        with self._lock:
            self.client_ports.append(port)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def take_busy(self, body: bytes) -> bool:
        """True for the first `busy_left` chat requests; their bodies are kept so a test can
        tell which prompt each 503 hit."""
        with self._lock:
            if self.busy_left > 0:
                self.busy_left -= 1
                self.busy_bodies.append(body)
                return True
            return False

    def served_model(self) -> str:
        """The upstream's model id (GET /v1/models, asked once)."""
        if self._served is None:
            upstream = http.client.HTTPConnection(
                self.upstream_host, self.upstream_port, timeout=30
            )
            try:
                upstream.request("GET", "/v1/models")
                self._served = str(json.loads(upstream.getresponse().read())["data"][0]["id"])
            finally:
                upstream.close()
        return self._served

    def prompt_tokens(self, request: dict[str, Any]) -> int:
        """The prompt's tokens as vLLM counts them: the served chat template applied."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.checkpoint))
        kwargs = request.get("chat_template_kwargs") or {}
        ids = self._tokenizer.apply_chat_template(
            request["messages"], add_generation_prompt=True, tokenize=True, **kwargs
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return len(ids)

    def stop(self) -> None:
        """Close the port and every open connection, as a server that went away does."""
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: ChaosProxy

    def setup(self) -> None:
        super().setup()
        self.proxy.opened(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        self.proxy.note(f"{self.command} {self.path}")

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length))

    def _handle(self, body: bytes) -> None:
        if self.path.endswith("/metrics"):
            self._send(200, VLLM_METRICS.encode(), "text/plain; version=0.0.4")
            return
        route, _, rest = self.path.lstrip("/").partition("/")
        if route not in ROUTES or not rest.startswith("v1/"):
            page = b"<html><body><h1>404 Not Found</h1>This is not an API.</body></html>"
            self._send(404, page, "text/html")
            return
        if route == "auth" and self.headers.get("Authorization") != f"Bearer {self.proxy.key}":
            sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            error: dict[str, Any] = {
                "message": f"Incorrect API key provided: {sent}",
                "code": "invalid_api_key",
            }
            self._send(401, json.dumps({"error": error}).encode(), "application/json")
            return
        if self.command == "GET":
            self._forward_counted(route, "/" + rest, body)
            return
        if route == "sglang":  # any model name is answered by the one model served
            request = json.loads(body)
            request["model"] = self.proxy.served_model()
            refusal = _sglang_refusal(self.proxy, request)
            if refusal is not None:
                error = {"object": "error", "message": refusal, "type": "BadRequest", "code": 400}
                self._send(400, json.dumps(error).encode(), "application/json")
                return
            body = json.dumps(request).encode()
        if route == "prefilled":  # the Thinking name it lists is the served model
            request = json.loads(body)
            request["model"] = str(request.get("model", "")).removesuffix(THINKING_SUFFIX)
            body = json.dumps(request).encode()
        if route == "limited":
            request = json.loads(body)
            refusal = _vllm_refusal(self.proxy, request)
            if refusal is not None:
                error = {"error": {"message": refusal, "type": "BadRequestError", "code": 400}}
                self._send(400, json.dumps(error).encode(), "application/json")
                return
            body = _clamped(self.proxy, request)
        if self.proxy.max_tokens_cap is not None:
            body = _capped(json.loads(body), self.proxy.max_tokens_cap)
        if self.proxy.take_busy(body):
            if self.proxy.busy_in_stream:
                self._start_stream()
                self._chunk(b"data: " + json.dumps(QUEUE_FULL).encode() + b"\n\n")
                self._chunk(b"")
                return
            self._send(503, b'{"error": {"message": "busy"}}', "application/json", retry=True)
            return
        if route == "malformed":
            self._start_stream()
            self._chunk(b'data: {"id": "x", "choices": [{"delta": {"content": "hi"}\n\n')
            self._chunk(b"")
            return
        if route == "stall":
            self._start_stream()
            time.sleep(5)
            self.close_connection = True
            return
        self._forward_counted(route, "/" + rest, body)

    def _forward_counted(self, route: str, path: str, body: bytes) -> None:
        self.proxy.enter(int(self.client_address[1]))
        try:
            self._forward(route, path, body)
        finally:
            self.proxy.leave()

    def _forward(self, route: str, path: str, body: bytes) -> None:
        upstream = http.client.HTTPConnection(
            self.proxy.upstream_host, self.proxy.upstream_port, timeout=60
        )
        headers = {"Content-Type": self.headers.get("Content-Type") or "application/json"}
        upstream.request(self.command, path, body=body or None, headers=headers)
        response = upstream.getresponse()
        kind = response.getheader("Content-Type") or ""
        if "text/event-stream" not in kind:
            payload = response.read()
            if (
                route in ("limited", "sglang")
                and path.endswith("/models")
                and response.status == 200
            ):
                listing = json.loads(payload)
                for entry in listing.get("data", []):
                    entry["max_model_len"] = SERVED_CONTEXT
                    entry["owned_by"] = "vllm" if route == "limited" else "sglang"
                payload = json.dumps(listing).encode()
            if route == "prefilled" and path.endswith("/models") and response.status == 200:
                listing = json.loads(payload)
                for entry in listing.get("data", []):
                    entry["id"] += THINKING_SUFFIX
                payload = json.dumps(listing).encode()
            self._send(response.status, payload, kind)
            upstream.close()
            return
        cut = b"CUT" in body
        self._start_stream()
        events = 0
        thinking = False
        try:
            while True:
                line = response.readline()
                if not line:
                    if route == "pass":
                        self._chunk(b"data: [DONE]\n\n")
                    break
                if not line.startswith(b"data: "):
                    self._chunk(line)
                    continue
                events += 1
                if cut and events > 3:
                    self.close_connection = True
                    return  # no terminating chunk: the client sees the connection drop
                if route == "error" and events > 3:
                    self._chunk(b"data: " + json.dumps(ENGINE_ERROR).encode() + b"\n\n")
                    self._chunk(b"data: [DONE]\n\n")
                    self._chunk(b"")
                    return
                if route == "garbled" and events > 3:
                    self._chunk(b'data: {"id": "x", "choices": [{"delta": {"content": "hi"}\n\n')
                    self._chunk(b"")
                    return
                if route in ("inline", "prefilled", "untagged"):
                    line, thinking = _inline(line, thinking, opening=route == "inline")
                if route == "r1parser":
                    line = _all_reasoning(line)
                self._chunk(line)
            self._chunk(b"")
        except OSError:
            self.close_connection = True  # the client went away: drop the upstream request
            self.proxy.disconnects.append(time.monotonic())
        finally:
            upstream.close()

    def _send(self, status: int, body: bytes, kind: str, retry: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if retry:
            self.send_header("Retry-After", self.proxy.busy_retry_after)
        self.end_headers()
        self.wfile.write(body)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _vllm_refusal(proxy: ChaosProxy, request: dict[str, Any]) -> str | None:
    """vLLM 0.33's refusal of a prompt its context cannot take (its wording), or None: a prompt
    longer than the context, or one that fills it (no room left for max_tokens)."""
    prompt = proxy.prompt_tokens(request)
    if prompt > SERVED_CONTEXT:
        return (
            f"This model's maximum context length is {SERVED_CONTEXT} tokens. However, your "
            f"prompt contains {prompt} input tokens, which exceeds this limit even without any "
            "output tokens. Please reduce the length of the input prompt."
        )
    if prompt == SERVED_CONTEXT:
        return "max_tokens must be at least 1, got 0."
    return None


def _sglang_refusal(proxy: ChaosProxy, request: dict[str, Any]) -> str | None:
    """SGLang's refusal of a request longer than its context (its wording), or None."""
    prompt = proxy.prompt_tokens(request)
    asked = int(request.get("max_completion_tokens") or request.get("max_tokens") or 0)
    if prompt >= SERVED_CONTEXT:
        return (
            f"The input ({prompt} tokens) is longer than the model's context length "
            f"({SERVED_CONTEXT} tokens)."
        )
    if prompt + asked > SERVED_CONTEXT:
        return (
            "Requested token count exceeds the model's maximum context length of "
            f"{SERVED_CONTEXT} tokens. You requested a total of {prompt + asked} tokens: "
            f"{prompt} tokens from the input messages and {asked} tokens for the completion. "
            "Please reduce the number of tokens in the input messages or the completion to fit "
            "within the limit."
        )
    return None


def _clamped(proxy: ChaosProxy, request: dict[str, Any]) -> bytes:
    """The request with `max_tokens` lowered to the room the context leaves (vLLM 0.32+:
    serve/utils/api_utils.py get_max_tokens)."""
    room = SERVED_CONTEXT - proxy.prompt_tokens(request)
    for name in ("max_tokens", "max_completion_tokens"):
        if name in request:
            request[name] = min(int(request[name]), room)
    return json.dumps(request).encode()


def _capped(request: dict[str, Any], cap: int) -> bytes:
    """The request with `max_tokens` lowered to `cap` (vLLM's generation-config limit)."""
    for name in ("max_tokens", "max_completion_tokens"):
        if name in request:
            request[name] = min(int(request[name]), cap)
    return json.dumps(request).encode()


def _all_reasoning(line: bytes) -> bytes:
    """One SSE line with its content moved to the `reasoning` field."""
    payload = line[len(b"data: ") :].strip()
    if payload == b"[DONE]":
        return line
    event = json.loads(payload)
    for choice in event.get("choices", []):
        delta = choice.get("delta") or {}
        content = delta.pop("content", None)
        if content:
            delta["reasoning"] = (delta.pop("reasoning_content", None) or "") + content
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _inline(line: bytes, thinking: bool, opening: bool = True) -> tuple[bytes, bool]:
    """One SSE line with `reasoning_content` moved into `content` between <think> tags; without
    `opening` only `</think>` is written (the template opened the block in the prompt)."""
    payload = line[len(b"data: ") :].strip()
    if payload.startswith(b"[DONE]"):
        return line, thinking
    event = json.loads(payload)
    for choice in event.get("choices", []):
        delta = choice.get("delta", {})
        reasoning = delta.pop("reasoning_content", None)
        content = delta.get("content")
        text = ""
        if reasoning:
            text += ("" if thinking or not opening else "<think>") + reasoning
            thinking = True
        if content:
            text += ("</think>" if thinking else "") + content
            thinking = False
        if text:
            delta["content"] = text
    return b"data: " + json.dumps(event).encode() + b"\n\n", thinking


class LoggedKernel(Kernel):
    """A kernel whose process stdout/stderr go to `log` (library logs, warnings, crashes)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        from qwen3_jupyter.bench._kernel import private_kernel_manager

        self.log = log
        self.executions: list[Any] = []
        self.km = private_kernel_manager()
        full_env = dict(os.environ)
        full_env.update(env)
        self._log_handle = log.open("ab")
        self.km.start_kernel(env=full_env, stdout=self._log_handle, stderr=self._log_handle)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(
        self, code: str, timeout: float = 120, on_message: Any = None, cell_id: str | None = None
    ) -> Any:
        execution = super().run(code, timeout=timeout, on_message=on_message, cell_id=cell_id)
        self.executions.append(execution)
        return execution

    def collect(self, msg_id: str, timeout: float = 120) -> Any:
        execution = super().collect(msg_id, timeout=timeout)
        self.executions.append(execution)
        return execution

    def shutdown(self) -> None:
        super().shutdown()
        self._log_handle.close()
