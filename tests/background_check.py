"""mypy started as the suite starts, at the lowest CPU priority, and judged by its test.

Why: a cold mypy run (what a clean clone always has) takes about a minute of one core, and the
suite leaves a core idle about half the time (it mostly waits on one kernel). Started at
collection with `nice 19`, it runs in that idle time and is done long before `test_mypy` asks;
the test still fails with mypy's own output. Only started when `test_mypy` was collected.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 280
"""Below pytest's own limit per test (300 s), so this one says what ran out."""


@dataclass
class BackgroundCheck:
    """One command running in the background, its output going to a file."""

    process: subprocess.Popen[bytes]
    output: Path

    def result(self) -> tuple[int, str]:
        """Wait for it; (exit status, what it printed)."""
        if not self.wait():
            return -1, f"did not finish in {TIMEOUT_S} s"
        return self.process.returncode, self.output.read_text(errors="replace")

    def wait(self) -> bool:
        """Wait for it to end; False (and stopped) if it ran past `TIMEOUT_S`."""
        try:
            self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            return False
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output.unlink(missing_ok=True)


def start(*args: str) -> BackgroundCheck:
    """`python -m <args>` in the repository root at the lowest CPU priority.

    A thread waits on it from the start: an ended child nobody waited for stays a zombie, and
    psutil raises on a zombie's command line (a test listing this process's children failed)."""
    handle, name = tempfile.mkstemp(prefix="qwen3-check-", suffix=".txt")
    nice = shutil.which("nice")
    command = [sys.executable, "-m", *args]
    with os.fdopen(handle, "wb") as out:
        process = subprocess.Popen(
            [nice, "-n", "19", *command] if nice else command,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    threading.Thread(target=process.wait, name="reap-background-check", daemon=True).start()
    return BackgroundCheck(process, Path(name))


MYPY: BackgroundCheck | None = None
"""The run `test_mypy` judges, once the conftest started it."""
