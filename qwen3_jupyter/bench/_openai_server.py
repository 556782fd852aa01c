"""A real OpenAI-compatible server for the tests and `bench remote`: `transformers serve` of the
embedded `tiny` checkpoint, on CPU, offline, on a free port.

The served folder is the embedded checkpoint (its files linked, not copied) with two changes
that make it behave like a released Qwen3 behind a server:
- its chat template opens the thinking block in the prompt (`<think>\\n`) when thinking is on,
  as Qwen3's thinking-only releases (Qwen3-*-Thinking-2507) and Qwen3.5 do. Random weights never
  write `<think>` themselves; with the block opened by the template, the server's reasoning
  parser routes what the model writes to `reasoning_content`, so thinking on/off is observable;
- its generation config samples by default (Qwen3-1.7B's own: temperature 0.6, top-p 0.95,
  top-k 20), since `transformers serve` takes `do_sample` from there; temperature 0 is greedy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..embedded import ensure_built

SERVED_NAME = "tiny-served"
LISTS_NOTHING_AFTER_S = 20.0
"""How long a server may answer `GET /v1/models` with an empty list before the wait ends."""
QWEN3_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
_THINKING_OFF = "{%- if enable_thinking is defined and enable_thinking is false %}"
_PREFILL = "{{- '<think>\\n\\n</think>\\n\\n' }}{%- else %}{{- '<think>\\n' }}{%- endif %}"


def served_checkpoint(root: Path) -> Path:
    """The folder to serve: the embedded `tiny` model's files, with a thinking-prefill template."""
    source = ensure_built("tiny")
    target = root / SERVED_NAME
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        link = target / item.name
        if item.name in ("chat_template.jinja", "generation_config.json") or link.exists():
            continue
        link.symlink_to(item)
    template = (source / "chat_template.jinja").read_text(encoding="utf-8")
    closing = "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    if _THINKING_OFF not in template or closing not in template:
        raise RuntimeError("the embedded chat template changed: update served_checkpoint()")
    head, tail = template.rsplit(closing, 1)
    (target / "chat_template.jinja").write_text(head + _PREFILL + tail, encoding="utf-8")
    config = json.loads((source / "generation_config.json").read_text(encoding="utf-8"))
    config.update(QWEN3_SAMPLING)
    generation = target / "generation_config.json"
    generation.unlink(missing_ok=True)
    generation.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenAIServer:
    """`transformers serve CHECKPOINT --port N` as a child process, logging to `log`."""

    def __init__(
        self,
        checkpoint: Path,
        workdir: Path,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.checkpoint = checkpoint
        self.extra_args = extra_args
        self.port = port or free_port()
        self.log = workdir / f"transformers-serve-{self.port}.log"
        self.hf_home = workdir / "hf-home"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The served model's id (the checkpoint folder, as `transformers serve` names it)."""
        return str(self.checkpoint)

    def start(self, timeout: float = 180.0) -> OpenAIServer:
        """Start the server and wait until it lists its model. Offline: the Hugging Face cache
        folder must exist (GET /v1/models answers 500 without it), nothing is downloaded."""
        (self.hf_home / "hub").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            HF_HOME=str(self.hf_home),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        for secret in ("QWEN3_JUPYTER_API_KEY", "OPENAI_API_KEY"):
            env.pop(secret, None)
        command = [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            str(self.checkpoint),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--log-level",
            "info",
            *self.extra_args,
        ]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until the server lists the model it serves. One that answers with an empty list
        for LISTS_NOTHING_AFTER_S is an older transformers (5.17 and 5.20 list no local
        checkpoint): said then, where the wait ran its whole 180 s and blamed the server."""
        deadline = time.monotonic() + timeout
        empty_since: float | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                    if json.load(response).get("data"):
                        return
                empty_since = empty_since or time.monotonic()
            except (OSError, ValueError):
                pass
            if empty_since is not None and time.monotonic() - empty_since > LISTS_NOTHING_AFTER_S:
                raise RuntimeError(
                    f"transformers serve {_transformers_version()} answers but lists no model "
                    "(5.17 and 5.20 list no local checkpoint; 5.24 does): run it with a "
                    f"newer transformers; see {self.log}"
                )
            time.sleep(0.25)
        raise TimeoutError(f"transformers serve did not answer in {timeout:.0f} s: see {self.log}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_tiny(
    workdir: Path, timeout: float = 180.0, extra_args: tuple[str, ...] = ()
) -> OpenAIServer:
    """Build (if needed) and serve the tiny checkpoint; the caller stops it. `extra_args` go to
    `transformers serve` (e.g. `--continuous-batching`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return OpenAIServer(served_checkpoint(workdir), workdir, extra_args=extra_args).start(timeout)


def _transformers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "(version unknown)"
