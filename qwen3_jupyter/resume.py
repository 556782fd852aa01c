"""What an earlier run of the same batch wrote to its results file: a rerun takes it.

Why: an interrupted run of hours kept what finished in its `--out` file, and running the cell
again asked every prompt anew and appended them all a second time (read back, the first ones
twice, with no way to tell the runs apart but the prompt text). A line is taken instead of
asking again when it answers the same prompt at the same position, from the same model, with
the same generation options, and has an answer (a server request that failed is asked again).
Lines of releases before this one carry no options: they are never taken.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .generation import GenerationOptions, Result

_RESULT_FIELDS = {f.name for f in fields(Result)}


def options_record(options: GenerationOptions) -> dict[str, Any]:
    """The options a results line records, to tell whether a later run asked the same."""
    return asdict(options)


def earlier_results(
    out: str | os.PathLike[str] | None,
    prompts: Sequence[str],
    model: str,
    options: GenerationOptions,
) -> dict[int, Result]:
    """The results `out` holds for `prompts` (by position) asked of `model` with `options`;
    the last line wins where a prompt has several. Nothing where the file does not exist or
    cannot be read (the run's own writer says why, if it matters)."""
    if out is None:
        return {}
    wanted = options_record(options)
    found: dict[int, Result] = {}
    try:
        with Path(out).expanduser().open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                taken = _taken(line, prompts, model, wanted)
                if taken is not None:
                    found[taken[0]] = taken[1]
    except OSError:
        return {}
    return found


def _taken(
    line: str, prompts: Sequence[str], model: str, wanted: dict[str, Any]
) -> tuple[int, Result] | None:
    """(position, result) when `line` answers that position's prompt as this run would."""
    try:
        record = json.loads(line)
    except ValueError:  # a line cut by a killed run, or not ours
        return None
    if not isinstance(record, dict):
        return None
    index = record.get("index")
    if not isinstance(index, int) or not 0 <= index < len(prompts):
        return None
    same = (
        record.get("prompt") == prompts[index]
        and record.get("model") == model
        and record.get("options") == wanted
        and record.get("error") is None
    )
    if not same:
        return None
    values = {name: value for name, value in record.items() if name in _RESULT_FIELDS}
    values["token_ids"] = tuple(values.get("token_ids") or ())
    try:
        return index, Result(**values)
    except TypeError:  # a field missing: written by something else
        return None
