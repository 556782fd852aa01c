"""What every bench's command line shares: argparse types that refuse a bad value while the
options are parsed, and Ctrl-C as one line.

Why: a bench runs for minutes (tens of them on a GPU); a bad `--out`, `--json` or count found
only at its end threw the run away with a traceback, and a Ctrl-C printed 20-60 lines of the
harness's frames. An argparse type's `ArgumentTypeError` is argparse's own one-line usage error
(exit code 2), given before any kernel, server or measurement starts.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTERRUPTED = 130
"""The exit code of a program a Ctrl-C (SIGINT) ended, as shells report it (128 + 2)."""


def _number(text: str, kind: Callable[[str], Any]) -> Any:
    try:
        number = kind(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def positive_int(text: str) -> int:
    """argparse type: a whole number of 1 or more (0 calls or 0 repeats measure nothing)."""
    number = _number(text, int)
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of 1 or more")
    return int(number)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of 0 or more."""
    number = _number(text, int)
    if number is None or number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of 0 or more")
    return int(number)


def positive_float(text: str) -> float:
    """argparse type: a number of seconds (or a period) above 0."""
    number = _number(text, float)
    if number is None or number <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a number above 0")
    return float(number)


def non_negative_float(text: str) -> float:
    """argparse type: a number of 0 or more (0 meaning "none", where the option says so)."""
    number = _number(text, float)
    if number is None or number < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of 0 or more")
    return float(number)


def positive_ints(text: str) -> list[int]:
    """argparse type: whole numbers of 1 or more, comma-separated (`1,4,16`)."""
    numbers = [_number(part, int) for part in text.split(",")]
    if not numbers or any(n is None or n < 1 for n in numbers):
        raise argparse.ArgumentTypeError(
            f"{text!r}: whole numbers of 1 or more, comma-separated (e.g. 1,4,16)"
        )
    return [int(n) for n in numbers]


def positive_floats(text: str) -> list[float]:
    """argparse type: numbers above 0, comma-separated (`0.5,0.1`)."""
    numbers = [_number(part, float) for part in text.split(",")]
    if not numbers or any(n is None or n <= 0 for n in numbers):
        raise argparse.ArgumentTypeError(
            f"{text!r}: numbers above 0, comma-separated (e.g. 0.5,0.1)"
        )
    return [float(n) for n in numbers]


def device_name(text: str) -> str:
    """argparse type: a device torch can name (`cpu`, `cuda`, `cuda:1`). Whether it is present
    is the bench's to say, as the model load does (`--device cuda` on a machine without one)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device torch knows (try cpu, cuda, cuda:1)"
        ) from None
    return text


def output_file(text: str) -> str:
    """argparse type: a file the run can write at its end (its folder exists and takes a new
    file; it is not itself a folder). The text as given: it goes into JSON beside the rest."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: name a file to write")
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {str(folder)!r} does not exist")
    if not _can_write_in(folder) or (path.exists() and not _can_append(path)):
        raise argparse.ArgumentTypeError(f"{text!r}: this process cannot write there")
    return text


def output_folder(text: str) -> Path:
    """argparse type: a folder the run can write its files into (made at the end if missing:
    its nearest existing parent must be a folder that takes one)."""
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == path else f"is inside {str(existing)!r}, a file"
        raise argparse.ArgumentTypeError(f"{text!r} {what}: name a folder")
    if not _can_write_in(existing):
        raise argparse.ArgumentTypeError(f"{text!r}: this process cannot write in {existing}")
    return path


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in `folder`, tried (as root, `os.access` says yes to a
    read-only file system's folders too)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _can_append(path: Path) -> bool:
    try:
        with path.open("ab"):
            return True
    except OSError:
        return False


def interrupted_line(name: str, exc: KeyboardInterrupt) -> str:
    """`bench NAME: interrupted`, with what was measured before it where the bench said so
    (as the interrupt's message)."""
    said = str(exc)
    return f"bench {name}: interrupted" + (f"; {said}" if said else "")


def _cleanup_uninterrupted(signum: int, frame: Any) -> None:
    """The first Ctrl-C stops the bench; later ones are ignored, so that the clean-up on the
    way out (kernels, servers, temporary folders) is not cut short and left behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_main(name: str, main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run a bench's `main`; a Ctrl-C ends it in one line and exit code 130, after its own
    `finally` blocks shut its kernels and servers down."""
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main_thread else None
    if before is signal.default_int_handler:
        signal.signal(signal.SIGINT, _cleanup_uninterrupted)
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt as exc:
        print(interrupted_line(name, exc), file=sys.stderr, flush=True)
        return INTERRUPTED
    finally:
        if before is signal.default_int_handler:
            signal.signal(signal.SIGINT, before)
