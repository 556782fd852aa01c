"""Every bench's command line: a bad value is refused in one line while the options are parsed
(a bad `--out` was found after tens of minutes of measuring), Ctrl-C is one line and exit code
130, and what a bench starts (servers, temporary folders) goes with it."""

from __future__ import annotations

import argparse
import importlib
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.bench import _cli, endpoint, overhead, remote
from qwen3_jupyter.bench._openai_server import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (_cli.positive_int, [("1", 1), ("16", 16)], ["0", "-1", "x", "1.5", ""]),
        (_cli.non_negative_int, [("0", 0), ("3", 3)], ["-1", "x"]),
        (_cli.positive_float, [("0.5", 0.5), ("2", 2.0)], ["0", "-1", "x", "nan", "inf"]),
        (_cli.non_negative_float, [("0", 0.0), ("1.5", 1.5)], ["-5", "x", "nan"]),
        (_cli.positive_ints, [("1,4,16", [1, 4, 16]), ("2", [2])], ["x", "1,,4", "0,4", ""]),
        (_cli.positive_floats, [("0.5,0.1", [0.5, 0.1])], ["x", "0", "-1", "0.5,"]),
        (_cli.device_name, [("cpu", "cpu"), ("cuda:1", "cuda:1")], ["bogus", "cuda:x"]),
    ],
)
def test_argparse_types_take_good_values_and_refuse_bad_ones(
    kind: Any, good: list[tuple[str, Any]], bad: list[str]
) -> None:
    for text, value in good:
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            kind(text)


def test_output_paths_are_checked_before_the_run(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert _cli.output_folder(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists(), "checking makes nothing"
    assert _cli.output_file(str(tmp_path / "x.json")) == str(tmp_path / "x.json")
    refusals = [
        (_cli.output_folder, str(a_file), "is a file: name a folder"),
        (_cli.output_folder, str(a_file / "sub"), "a file: name a folder"),
        (_cli.output_file, str(tmp_path), "is a folder: name a file"),
        (_cli.output_file, str(tmp_path / "nonexistent" / "x.json"), "does not exist"),
    ]
    if Path("/proc/self").is_dir():  # a folder no process can make files in, root included
        refusals += [
            (_cli.output_folder, "/proc/qwen3-out", "cannot write in /proc"),
            (_cli.output_file, "/proc/qwen3.json", "cannot write there"),
        ]
    for kind, text, said in refusals:
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            kind(text)
    assert list(tmp_path.iterdir()) == [a_file], "the writability probe left nothing behind"


BAD_VALUES = [
    ("decay", ["--out", "{file}"], "argument --out: '{file}' is a file"),
    ("decay", ["--calls", "0"], "argument --calls: '0': a whole number of 1 or more"),
    ("speed", ["--json", "/nonexistent/x.json"], "the folder '/nonexistent' does not exist"),
    ("speed", ["--time-limit", "-5"], "argument --time-limit: '-5': a number of 0 or more"),
    ("speed", ["--device", "bogus"], "'bogus' is not a device torch knows"),
    ("remote", ["--concurrency", "x"], "argument --concurrency: 'x': whole numbers of 1"),
    ("remote", ["--repeats", "0"], "argument --repeats: '0': a whole number of 1 or more"),
    ("remote", ["--url", "localhost:8000"], "an http(s) URL, e.g."),
    ("attention", ["--shapes", "0"], "argument --shapes: '0': a whole number of 1 or more"),
    ("attention", ["--start", "1"], "--start 1: 5 or more"),
    ("attention", ["--kv-heads", "3"], "--kv-heads 3 does not divide --heads 16"),
    ("attention", ["--device", "bogus"], "argument --device: 'bogus' is not a device"),
    ("attention", ["--json", "{folder}"], "is a folder: name a file to write"),
    ("monitor", ["--intervals", "x"], "argument --intervals: 'x': numbers above 0"),
    ("monitor", ["--intervals", "0"], "argument --intervals: '0': numbers above 0"),
    ("monitor", ["--intervals", "-1"], "argument --intervals: '-1': numbers above 0"),
    ("monitor", ["--seconds", "-1"], "argument --seconds: '-1': a number above 0"),
    ("cleanup", ["--repeat", "0"], "argument --repeat: '0': a whole number of 1 or more"),
    ("cleanup", ["--json", "/nonexistent/x.json"], "the folder '/nonexistent' does not exist"),
    ("endpoint", ["--kernels", "1,0"], "argument --kernels: '1,0': whole numbers of 1"),
    ("endpoint", ["--clients", "0"], "argument --clients: '0': a whole number of 1 or more"),
    ("overhead", ["--repeats", "0"], "argument --repeats: '0': a whole number of 1 or more"),
    ("step", ["--json", "/nonexistent/x.json"], "the folder '/nonexistent' does not exist"),
]


@pytest.mark.parametrize(("bench", "argv", "said"), BAD_VALUES)
def test_a_bad_value_is_a_one_line_usage_error_before_anything_runs(
    bench: str,
    argv: list[str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused by argparse (exit code 2) before a kernel, server or measurement starts: each
    was found only after the run (or its server's start), or was a traceback."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    module = importlib.import_module(f"qwen3_jupyter.bench.{bench}")
    for name in ("Kernel", "InProcessServer", "OpenAIServer"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _nothing_may_start)
    with pytest.raises(SystemExit) as exit_info:
        module.main([arg.format(file=a_file, folder=tmp_path) for arg in argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.format(file=a_file) in error, error


def _nothing_may_start(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("started before the options were checked")


def test_the_command_line_exits_2_on_a_bad_value_and_0_on_help() -> None:
    """Through `python -m qwen3_jupyter.bench`, as a user runs it."""
    bad = _bench("attention", "--kv-heads", "3")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.splitlines()[-1].endswith(
        "error: --kv-heads 3 does not divide --heads 16: each key/value head serves a whole "
        "group of query heads"
    )
    assert "Traceback" not in bad.stderr
    assert _bench("monitor", "--help").returncode == 0


def _bench(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qwen3_jupyter.bench", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_interrupted_is_one_line_with_what_was_measured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def stopped(argv: list[str]) -> int:
        raise KeyboardInterrupt("tiny: 2 of 5 runs, ratio 1.010")

    assert _cli.run_main("overhead", stopped, []) == 130
    assert (
        capsys.readouterr().err == "bench overhead: interrupted; tiny: 2 of 5 runs, ratio 1.010\n"
    )

    def plain(argv: list[str]) -> int:
        raise KeyboardInterrupt

    assert _cli.run_main("speed", plain, []) == 130
    assert capsys.readouterr().err == "bench speed: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler put back"


def test_ctrl_c_is_one_line_exit_130_and_the_cleanup_is_not_cut_short(tmp_path: Path) -> None:
    """A real SIGINT, a second one arriving during the bench's clean-up: the clean-up finishes
    (the second is ignored), one line is printed, the exit code is 130."""
    cleaned = tmp_path / "cleaned"
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from qwen3_jupyter.bench._cli import run_main

        def main(argv):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # impatient: a second Ctrl-C
                time.sleep(0.2)
                open({str(cleaned)!r}, "w").close()
            return 0

        sys.exit(run_main("fake", main, []))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 130
    assert done.stderr == "bench fake: interrupted\n"
    assert cleaned.exists()


def test_an_interrupted_overhead_run_says_the_medians_so_far() -> None:
    assert overhead.runs_so_far("tiny", [], [], 5) == "tiny: no run finished"
    said = overhead.runs_so_far("tiny", [0.1, 0.3, 0.2], [0.2, 0.4], 5)
    assert said == "tiny: 2 of 5 runs, medians bare 0.200 s, %qwen3 0.300 s, ratio 1.500"


def test_remote_says_in_one_line_that_nothing_answers_at_its_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was an 18-line APIConnectionError traceback, after a kernel had started."""
    monkeypatch.setattr(remote, "Kernel", _nothing_may_start)
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(SystemExit) as exit_info:
        remote.main(["--url", url])
    said = str(exit_info.value.code)
    assert said.startswith(f"bench remote: no server answers at {url} (") and "\n" not in said


def test_remote_without_the_serving_extras_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a pip install without `transformers[serving]` the server exited at once, and the
    bench named a log (in a folder then removed) rather than what was missing."""
    monkeypatch.setattr(remote.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(remote, "OpenAIServer", _nothing_may_start)
    monkeypatch.setattr(remote, "Kernel", _nothing_may_start)
    with pytest.raises(SystemExit) as exit_info:
        remote.main([])
    assert str(exit_info.value.code) == (
        "bench remote: serving the tiny model here needs transformers' serving extras (fastapi, "
        "uvicorn missing): pip install 'qwen3-jupyter[serve]', or give --url of a running server"
    )


class FailingServer:
    """An `OpenAIServer` whose process exits at once, having written its log."""

    stopped = False

    def __init__(self, checkpoint: Path, workdir: Path, **kwargs: Any) -> None:
        self.log = workdir / "transformers-serve-1.log"

    def start(self) -> FailingServer:
        self.log.write_text("starting\nOSError: no such checkpoint\n")
        raise RuntimeError(f"transformers serve exited: see {self.log}")

    def stop(self) -> None:
        FailingServer.stopped = True


def test_a_server_that_does_not_start_is_stopped_and_its_log_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message named a log inside the temporary folder removed on the way out, and the
    server (never assigned) was not stopped."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(remote, "served_checkpoint", lambda root: root)
    monkeypatch.setattr(remote, "OpenAIServer", FailingServer)
    monkeypatch.setattr(remote, "Kernel", _nothing_may_start)
    with pytest.raises(SystemExit) as exit_info:
        remote.main([])
    said = str(exit_info.value.code)
    assert FailingServer.stopped
    kept = [p for p in tmp_path.iterdir()]
    assert len(kept) == 1 and kept[0].name.startswith("qwen3-bench-remote-serve-"), kept
    assert kept[0].read_text() == "starting\nOSError: no such checkpoint\n"
    assert said == (
        f"bench remote: transformers serve exited: see {kept[0]}; its last line: OSError: no "
        "such checkpoint"
    )


def test_endpoint_removes_its_root_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run left an empty /tmp/qwen3-bench-endpoint-* behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    roots: list[Path] = []

    def measured(root: Path, args: argparse.Namespace, say: Any) -> dict[str, Any]:
        roots.append(root)
        assert root.is_dir() and root.parent == tmp_path
        return {"ratio": 1.0}

    monkeypatch.setattr(endpoint, "_run_in", measured)
    assert endpoint.run(argparse.Namespace()) == {"ratio": 1.0}

    def interrupted(root: Path, args: argparse.Namespace, say: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(endpoint, "_run_in", interrupted)
    with pytest.raises(KeyboardInterrupt):
        endpoint.run(argparse.Namespace())
    assert roots and list(tmp_path.iterdir()) == []


def test_endpoint_names_what_its_ratio_counts() -> None:
    """Without NVML the ratio is of the sampler's reads: "NVML ratio" said otherwise."""
    latency = {1: {"server_p95_ms": 0.5}}
    ok, said = endpoint.verdict(
        {"latency": latency, "ratio": 1.0, "ratio_of": "sampler reads (no NVML here)"}
    )
    assert ok
    assert said == (
        "PASS (worst server p95 0.50 ms; ratio of sampler reads (no NVML here) per second 1.00)"
    )
    ok, said = endpoint.verdict(
        {"latency": latency, "ratio": 1.5, "ratio_of": endpoint.RATIO_OF["nvml_calls_per_s"]}
    )
    assert not ok and said.endswith("ratio of NVML calls per second 1.50)")


def test_cleanup_with_a_model_that_does_not_load_is_one_line(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was a RuntimeError traceback; the other benches say it in one line."""
    from qwen3_jupyter.bench import cleanup

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cleanup.main(["--model", "nosuch", "--objects", "10", "--repeat", "1"])
    said = str(exit_info.value.code)
    assert said.startswith("bench cleanup: model 'nosuch' not found: ") and "\n" not in said
    assert list(tmp_path.iterdir()) == [], "the kernel's folder was left"
