"""A real JupyterLab server for the browser tests, and a headless Chromium to drive it.

`lab_server` (one per test session) serves an empty temporary root with the test kernel
environment (tiny model, shared model cache). `lab_server_factory(extra_env)` starts more
servers, e.g. with a fake NVML from `tests.fake_nvml.child_env`. `browser_page` is a fresh
Playwright page on /usr/bin/chromium (`scrollbar_page`: one that shows scrollbars). UI tests
carry `@pytest.mark.ui`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class LabServer:
    """A running `jupyter lab`: where it is, how to authenticate, where its files live."""

    base_url: str
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def url(self, path: str = "lab") -> str:
        """An address in the server with the token attached (for the browser)."""
        joiner = "&" if "?" in path else "?"
        return f"{self.base_url}{path.lstrip('/')}{joiner}token={self.token}"

    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """Call the REST API with the token; returns the decoded JSON (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_lab(root_dir: Path, env: dict[str, str], timeout: float = 90) -> LabServer:
    """Start `jupyter lab` on a free port and wait until /api/status answers."""
    root_dir.mkdir(parents=True, exist_ok=True)
    state = root_dir.parent / f"{root_dir.name}-jupyter-state"
    state.mkdir(exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    full_env = {
        **os.environ,
        **env,
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
    }
    log_path = state / "lab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = LabServer(f"http://127.0.0.1:{port}/", token, root_dir, log_path, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited ({process.returncode}):\n{server.log()[-3000:]}"
            )
        try:
            server.api("api/status")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                stop_lab(server)
                raise RuntimeError(f"jupyter lab did not answer:\n{server.log()[-3000:]}") from None
            time.sleep(0.25)


def stop_lab(server: LabServer) -> None:
    """Shut the server down with its kernels; kill it if it does not go."""
    if server.process.poll() is None:
        try:
            server.api("api/shutdown", method="POST")
        except Exception:
            server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)


@pytest.fixture(scope="session")
def lab_server_factory(
    kernel_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LabServer]]:
    """`start(extra_env=None)` -> a new LabServer with the test kernel environment."""
    servers: list[LabServer] = []

    def start(extra_env: dict[str, str] | None = None) -> LabServer:
        root = tmp_path_factory.mktemp("lab-root")
        server = start_lab(root, {**kernel_env, **(extra_env or {})})
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_lab(server)


@pytest.fixture(scope="session")
def lab_server(lab_server_factory: Callable[..., LabServer]) -> LabServer:
    """One JupyterLab for the session (no fake NVML: this machine's real, driverless one)."""
    return lab_server_factory()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium from /usr/bin (never `playwright install`)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("no /usr/bin/chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def browser_page(browser: Any) -> Iterator[Any]:
    """A fresh page (own context) at 1400x900."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture()
def scrollbar_page(browser: Any) -> Iterator[Any]:
    """A page at 1366x768 whose scrollbars take room, as in a user's browser: Playwright hides
    them (--hide-scrollbars), and with them a panel narrowed by its scrollbar."""
    launched = browser.browser_type.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, ignore_default_args=["--hide-scrollbars"]
    )
    context = launched.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    yield page
    context.close()
    launched.close()
