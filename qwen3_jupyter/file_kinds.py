"""What a path the user named is when it is not a regular file: a folder, a pipe, a device.

Why: `--file /dev/zero` read until memory ran out, a FIFO with no writer held the cell (and
Tab after `--field` the whole kernel) waiting for one, and `--out /dev/full` was called a file
"holding something other than results"."""

from __future__ import annotations

import stat
from pathlib import Path


def special_kind(path: Path) -> str:
    """ "a folder", "a pipe" or "a device or socket" for such a `path` (a link is followed),
    "" for a regular file; OSError where it cannot be seen (FileNotFoundError included)."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a pipe" if stat.S_ISFIFO(mode) else "a device or socket"
