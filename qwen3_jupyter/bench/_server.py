"""A real Jupyter server inside this process (on its own thread), for endpoint tests and bench.

`InProcessServer` runs a real `jupyter_server.ServerApp` with its own event loop on a thread of
the test process, so a fake `pynvml` installed in this process (tests/fake_nvml.py) is the one
the server's sampler imports, and its process lists can be changed while the server runs (the
kernels' PIDs are only known once they started). Requests go over real HTTP with a token.

Shared by `python -m qwen3_jupyter.bench endpoint` and tests/test_server.py; the browser tests
use `jupyter lab` subprocesses instead (tests/ui/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient

HEARTBEAT_GRACE_S = 10.0
"""How long a kernel may leave heartbeats unanswered before a client made here calls it dead.

Why: a client made from a connection file (not by a KernelManager, which watches the process)
judges liveness by heartbeats, 1 s by default; a kernel still starting when the client connects
(the server returns before its kernel is up) answers its first one later than that on a busy
host, and `wait_for_ready` raised "Kernel died before replying to kernel_info" for a kernel that
was alive (a full suite run: test_server's fixture, and so all 18 of its tests; measured: a
kernel 3 s slow to start fails after 1.0 s, with this grace it is ready in 3.9 s)."""


def ready_client(connection_file: Path, timeout: float = 60) -> BlockingKernelClient:
    """A client on a running kernel's connection file, once the kernel answers."""
    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.hb_channel.time_to_dead = HEARTBEAT_GRACE_S
    client.start_channels()
    client.wait_for_ready(timeout=timeout)
    return client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    url: str,
    token: str | None,
    method: str = "GET",
    body: Any = None,
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> Response:
    """One HTTP request; `token` None sends no credentials. Errors come back as responses."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"token {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return Response(reply.status, reply.read(), dict(reply.headers))
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read(), dict(error.headers))


class _Client:
    """What both servers share: the URL, the token, sessions and kernel clients."""

    base: str
    token: str
    root_dir: Path

    def url(self, *parts: str) -> str:
        return self.base + "/".join(p.strip("/") for p in parts)

    def get(self, *parts: str, token: bool = True) -> Response:
        return http(self.url(*parts), self.token if token else None)

    def metrics(self) -> dict[str, Any]:
        response = self.get("qwen3-jupyter", "metrics")
        assert response.status == 200, response.body
        return dict(response.json())

    def new_session(self, path: str) -> str:
        """Start a notebook session (and its kernel) like JupyterLab does; returns the kernel id."""
        response = http(
            self.url("api", "sessions"),
            self.token,
            "POST",
            {"path": path, "type": "notebook", "name": path, "kernel": {"name": "python3"}},
        )
        assert response.status == 201, response.body
        return str(response.json()["kernel"]["id"])

    def kernel_client(self, kernel_id: str) -> BlockingKernelClient:
        """A client on a server kernel's own connection file (like `jupyter console --existing`)."""
        return ready_client(self.connection_file(kernel_id))

    def connection_file(self, kernel_id: str) -> Path:
        raise NotImplementedError

    def wait_for(
        self, predicate: Any, timeout: float = 30, interval: float = 0.2
    ) -> dict[str, Any]:
        """Poll the metrics until `predicate(metrics)` holds; returns those metrics."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.metrics()
            if predicate(last):
                return last
            time.sleep(interval)
        raise AssertionError(f"metrics never matched; last: {json.dumps(last)[:2000]}")


def run_cell(client: BlockingKernelClient, code: str, timeout: float = 120) -> dict[str, Any]:
    """Execute `code`; returns the reply content, with its stdout under "stdout"."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = client.execute_interactive(code, timeout=timeout, output_hook=hook)
    content = dict(reply["content"])
    content["stdout"] = "".join(out)
    return content


class InProcessServer(_Client):
    """A real ServerApp on a thread of this process, with the qwen3_jupyter extension."""

    def __init__(self, root_dir: Path, base_url: str = "/", sample_interval: float = 0.2) -> None:
        self.root_dir = root_dir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base_url = base_url
        self.base = f"http://127.0.0.1:{self.port}{base_url}"
        self.sample_interval = sample_interval
        self.app: Any = None
        self.metrics_request_times: list[float] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-jupyter-server", daemon=True)

    def connection_file(self, kernel_id: str) -> Path:
        return Path(self.app.kernel_manager.get_kernel(kernel_id).connection_file)

    def start(self) -> InProcessServer:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("the Jupyter server did not start in 60 s")
        if self._error:
            raise self._error
        deadline = time.monotonic() + 30
        while True:
            try:
                if http(self.url("api", "status"), self.token, timeout=2).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the Jupyter server does not answer")
            time.sleep(0.1)

    def _run(self) -> None:
        from jupyter_server.serverapp import ServerApp
        from traitlets.config import Config

        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            config = Config(
                {
                    "ServerApp": {
                        "port": self.port,
                        "port_retries": 0,
                        "ip": "127.0.0.1",
                        "open_browser": False,
                        "allow_root": True,
                        "root_dir": str(self.root_dir),
                        "base_url": self.base_url,
                        "log_level": "WARN",
                        "jpserver_extensions": {
                            "qwen3_jupyter": True,
                            "jupyterlab": False,
                            "jupyter_lsp": False,
                            "notebook_shim": False,
                            "jupyter_server_terminals": False,
                        },
                    },
                    "IdentityProvider": {"token": self.token},
                    "Qwen3JupyterMetrics": {"sample_interval": self.sample_interval},
                }
            )
            app = ServerApp(config=config)
            app.init_signal = lambda: None  # type: ignore[method-assign]
            app.initialize(argv=[])
            self.app = app
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._watch_request_times(app)
        self._ready.set()
        app.start()

    def _watch_request_times(self, app: Any) -> None:
        """Record the server-side time of every metrics request (Tornado's `request_time`)."""
        from qwen3_jupyter.server.handlers import MetricsHandler

        settings = app.web_app.settings
        original = settings.get("log_function")

        def log(handler: Any) -> None:
            if isinstance(handler, MetricsHandler) and handler.get_status() == 200:
                self.metrics_request_times.append(handler.request.request_time())
            if original is not None:
                original(handler)

        settings["log_function"] = log

    @property
    def sampler(self) -> Any:
        from qwen3_jupyter.server import SAMPLER_SETTING

        return self.app.web_app.settings[SAMPLER_SETTING]

    def kernel_pid(self, kernel_id: str) -> int:
        return int(self.app.kernel_manager.get_kernel(kernel_id).provisioner.pid)

    def stop(self) -> None:
        if self.app is None:
            return
        self.sampler.stop()
        done = threading.Event()

        async def shutdown() -> None:
            try:
                await self.app.kernel_manager.shutdown_all(now=True)
            finally:
                done.set()

        self.app.io_loop.add_callback(shutdown)
        done.wait(30)
        self.app.io_loop.add_callback(self.app.io_loop.stop)
        self._thread.join(10)
        self.app = None
