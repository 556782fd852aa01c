"""The kernel driver the benchmarks and tests share: a kernel that dies mid-cell is reported at
once, so a crash in native code (a CUDA fault, say) cannot stall a bench until its timeout; and
each cell's status is its own, however slowly the kernel started."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from qwen3_jupyter.bench._kernel import Kernel, KernelDied, timed_cell
from qwen3_jupyter.kernel_comm import MARKER_SUFFIX


def test_a_kernel_that_dies_mid_cell_is_reported_at_once_and_leaves_no_file(
    kernel_env: dict[str, str],
) -> None:
    """Its marker file (written by `%load_ext`, removed at a clean exit) outlives a dead kernel;
    the driver's shutdown must take it away, or every bench kernel leaves one in /tmp."""
    kernel = Kernel(kernel_env)
    try:
        assert kernel.run("%load_ext qwen3_jupyter").status == "ok"
        connection_file = Path(kernel.km.connection_file)
        marker = connection_file.with_name(connection_file.stem + MARKER_SUFFIX)
        assert marker.exists(), "no marker was written: this test would prove nothing"
        started = time.monotonic()
        with pytest.raises(KernelDied, match="the kernel died while running 'import os"):
            kernel.run("import os, time\ntime.sleep(0.5)\nos._exit(3)", timeout=120)
        assert time.monotonic() - started < 30, "waited for the cell's timeout"
    finally:
        kernel.shutdown()
    assert not marker.exists(), f"the dead kernel's marker was left behind: {marker}"


def test_each_cell_gets_its_own_status_when_the_kernel_starts_slowly(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    """A kernel that takes over a second to answer its first kernel_info request (a cold disk,
    a busy host: the H100 run of issue 11) is sent a second one by `wait_for_ready`, and that
    reply stays queued. A driver that took "the next shell reply" then reported each cell's
    predecessor's status: the cell after a failing one failed, with no error of its own."""
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(1.5)\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    kernel = Kernel({**kernel_env, "PYTHONPATH": path})
    try:
        failing = kernel.run("1 / 0")
        assert failing.status == "error" and failing.error is not None
        assert failing.error["ename"] == "ZeroDivisionError"
        following = kernel.run("x = 1")
        assert following.status == "ok", following.reply
        assert kernel.value("x") == 1
    finally:
        kernel.shutdown()


def test_a_client_on_a_connection_file_waits_for_a_kernel_slow_to_start(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    """A client made from a connection file judges liveness by heartbeats, 1 s by default:
    `wait_for_ready` called a kernel still starting dead ("Kernel died before replying to
    kernel_info"), which failed test_server's module fixture, and all 18 of its tests, in a full
    run on a busy host. `ready_client` gives a starting kernel time."""
    import subprocess
    import sys

    from jupyter_client.connect import write_connection_file

    from qwen3_jupyter.bench._server import ready_client

    connection_file, _ = write_connection_file(str(tmp_path / "kernel.json"))
    starts_late = "import time; time.sleep(3)\nfrom ipykernel.kernelapp import launch_new_instance"
    process = subprocess.Popen(
        [sys.executable, "-c", f"{starts_late}\nlaunch_new_instance()", "-f", connection_file],
        env={**os.environ, **kernel_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = ready_client(Path(connection_file))
        client.execute("ready = 42")
        reply = client.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "ok"
        client.stop_channels()
    finally:
        process.kill()
        process.wait()


def test_a_failed_cell_is_reported_in_one_line(kernel_env: dict[str, str]) -> None:
    """The error's traceback dict (ANSI colours and all: 12.5k characters for one failed
    generate, printed twice per failed path) hid a lent GPU's whole table, whose runner returns
    only the last 12,000 characters. Every bench says `ename: evalue`'s first line."""
    from qwen3_jupyter.bench import decay, speed

    kernel = Kernel(kernel_env)
    try:
        failing = "def f():\n    raise ValueError('max_new_tokens must be > 0\\nsecond line')\nf()"
        assert kernel.run(failing).error_line == "ValueError: max_new_tokens must be > 0"
        for bench in (speed, decay):
            with pytest.raises(RuntimeError) as raised:
                bench._ok(kernel, failing)
            said = str(raised.value)
            assert said.endswith(": ValueError: max_new_tokens must be > 0"), said
            assert "\n" not in said and "traceback" not in said and "\x1b[" not in said
        with pytest.raises(RuntimeError, match=r": ValueError: max_new_tokens must be > 0$"):
            timed_cell(kernel, failing)
        usage = kernel.run("%qwen3 --no-such-flag")
        assert usage.error is None, "a UsageError sends no error message: the reply names it"
        assert usage.error_line.startswith("UsageError: "), usage.error_line
    finally:
        kernel.shutdown()


@pytest.mark.parametrize(
    ("bench", "argv"),
    [
        ("speed", ["--model", "nosuch", "--device", "cpu"]),
        ("decay", ["--quick", "--model", "nosuch", "--device", "cpu", "--out", "{out}"]),
        ("overhead", ["--models", "nosuch", "--device", "cpu"]),
    ],
)
def test_a_model_that_does_not_load_ends_a_kernel_bench_in_one_line(
    bench: str,
    argv: list[str],
    model_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As `bench step` says it, not a 25-line traceback through the harness; and the kernels
    the bench started go with it (a kernel whose load failed left its /tmp folder)."""
    import importlib

    kernels = tmp_path / "tmp"
    kernels.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(kernels))
    module = importlib.import_module(f"qwen3_jupyter.bench.{bench}")
    with pytest.raises(SystemExit) as exit_info:
        module.main([arg.format(out=tmp_path / "out") for arg in argv])
    said = str(exit_info.value.code)
    assert said.startswith(f"bench {bench}: model 'nosuch' not found: "), said
    assert "\n" not in said
    assert list(kernels.iterdir()) == [], "a kernel's folder (or a compile cache) was left"
