"""The prompts of a `%qwen3 --file`: a text file (one per line), or a column of a CSV/TSV file
or a field of a JSON Lines/JSON file.

Why the tables: prompts worth a batch usually live in a data set (a CSV export, a JSON Lines
file, the `--out` file of an earlier run), and read line by line such a file sent its header
and every quote, comma and brace to the model as the prompt, without a word. A structured file
also holds prompts of many lines, which a text file cannot. Every problem is one line naming
the file, the row and what to do (`--field` picks the column or field).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .file_kinds import special_kind

DEFAULT_FIELD = "prompt"
"""The column or field read when `--field` names none: what `--out` writes, so a results file
can be asked again."""

DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSON_LINES = (".jsonl", ".ndjson")
JSON = (".json",)
STRUCTURED = (*DELIMITERS, *JSON_LINES, *JSON)
BINARY_TABLES = (".xlsx", ".xls", ".parquet", ".feather", ".arrow", ".pkl", ".pickle")
"""Tables read as text would be "not UTF-8 (byte 0x50 on line 1): save it as UTF-8"."""

_BOM = "\ufeff"


class PromptFileError(ValueError):
    """A --file that cannot be read as prompts; the message is the one line the user sees."""


class FilePrompts(list[str]):
    """The prompts of a file, and where each is in it (`line 5`, `item 3`): an error about
    prompt 2 of a run names the line to fix, not a position among prompts the user never
    counted (blank lines skipped, rows of many lines)."""

    def __init__(self, path: str, placed: Iterable[tuple[str, str]]) -> None:
        pairs = list(placed)
        super().__init__(prompt for _, prompt in pairs)
        self.path = path
        self.where = [where for where, _ in pairs]

    def located(self, index: int) -> str:
        """`--file data.txt, line 5`: where prompt `index` is."""
        return f"--file {self.path}, {self.where[index]}"


def read_prompts(path: str, field: str | None = None) -> FilePrompts:
    """The prompts of `path`, by its suffix: `.csv`/`.tsv` a column (with a header row),
    `.jsonl`/`.ndjson` one JSON string or object per line, `.json` an array of them, anything
    else one prompt per line (blank lines skipped). `field` names the column or the objects'
    field (default `prompt`)."""
    suffix = Path(path).suffix.lower()
    if suffix in BINARY_TABLES:
        raise PromptFileError(
            f"--file reads text, CSV/TSV and JSON (Lines) files, not {suffix}: save {path} as "
            "CSV, or load it in Python and call qwen3_jupyter.generate_batch(df['column'])"
        )
    if field is not None and suffix not in STRUCTURED:
        raise PromptFileError(
            f"--field picks a column of a .csv/.tsv or a field of a .jsonl/.json file; "
            f"{path} is read as text, one prompt per line"
        )
    text = _read_text(path)
    if suffix in DELIMITERS:
        prompts = _from_table(path, text, DELIMITERS[suffix], field)
    elif suffix in JSON_LINES:
        prompts = _from_records(path, _json_lines(path, text), field, "line")
    elif suffix in JSON:
        prompts = _from_records(path, _json_array(path, text), field, "item")
    else:
        # "\n" only: splitlines() also split at a form feed or U+2028 (pasted from a PDF or a
        # web page), one line becoming several prompts and every later result shifted.
        lines = enumerate((line.lstrip(_BOM).strip() for line in text.split("\n")), 1)
        prompts = [(f"line {number}", line) for number, line in lines if line]
    if not prompts:
        what = "one per line" if suffix not in STRUCTURED else "no rows"
        raise PromptFileError(f"--file {path} holds no prompts ({what})")
    return FilePrompts(path, prompts)


def _read_text(path: str) -> str:
    """The file as UTF-8, with or without the byte-order mark Windows editors write. A mark
    starting any line of a text file is dropped too (files saved so and joined carry one per
    piece): `read_prompts` strips it there. Only a regular file is read in a kernel:
    `/dev/zero` filled memory until a MemoryError, and a FIFO with no writer held the cell with
    nothing shown (a terminal's pipe is read too: see `_piped_into_a_terminal`)."""
    file = Path(path).expanduser()
    try:
        special = special_kind(file)
        if special and not (special == "a pipe" and _piped_into_a_terminal()):
            raise PromptFileError(f"--file {path} is {special}, not a file of prompts")
        return file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PromptFileError(f"cannot read --file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise PromptFileError(
            f"--file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line "
            f"{line}): save it as UTF-8"
        ) from None


def _piped_into_a_terminal() -> bool:
    """Whether a pipe may be read: outside a kernel, where `printf … | ipython -c '%qwen3
    --file /dev/stdin'` pipes prompts in (a kernel's pipes have no writer a user controls)."""
    from .display import in_kernel

    return not in_kernel()


def _from_table(path: str, text: str, delimiter: str, field: str | None) -> list[tuple[str, str]]:
    """The column `field` (default `prompt`) of a CSV/TSV file whose first row names them."""
    delimiter = _delimiter(text.split("\n", 1)[0], delimiter)
    # Strict: a quote never closed took the rest of the file as one prompt, silently.
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    row_ended = 0  # the line the last whole row ended on
    try:
        header = [name.strip() for name in next(rows, [])]
        if not header:
            return []
        row_ended = rows.line_num
        column = _column(path, header, field)
        prompts = []
        for row in rows:
            if any(cell.strip() for cell in row):  # else a blank line, as spreadsheets end with
                value = row[column] if column < len(row) else ""
                where = f"line {row_ended + 1}"  # where the row starts (it may span lines)
                prompts.append((where, _prompt(path, where, value)))
            row_ended = rows.line_num
    except csv.Error as exc:
        raise PromptFileError(_table_error(path, str(exc), row_ended, rows.line_num)) from None
    return prompts


_OTHER_DELIMITERS = (";", "\t", ",")


def _delimiter(first_line: str, expected: str) -> str:
    """The delimiter the header row uses: `expected` (the suffix's), else `;` or a tab or a
    comma where only that one appears in it. A spreadsheet saved as CSV in a locale whose
    decimal mark is the comma writes `prompt;score`; read with commas, that row was one
    column, and naming it with --field sent `Hello;1` as the prompt."""
    if expected in first_line:
        return expected
    found = [d for d in _OTHER_DELIMITERS if d != expected and d in first_line]
    return found[0] if len(found) == 1 else expected


def _table_error(path: str, error: str, row_ended: int, line: int) -> str:
    """csv's error, with the line to fix and how: `unexpected end of data` is a quote opened
    after the last whole row and never closed."""
    if "unexpected end of data" in error:
        return (
            f"--file {path}, line {row_ended + 1}: a quoted field is never closed (the "
            'rest of the file would be one prompt): close it, or write a quote inside it as ""'
        )
    return (
        f"--file {path}, line {line}: {error} (a field that starts with a quote ends with one: "
        'write a quote inside it as "")'
    )


def _column(path: str, header: list[str], field: str | None) -> int:
    name = field or DEFAULT_FIELD
    if name in header:
        return header.index(name)
    listed = ", ".join(repr(h) for h in header[:12]) + (", …" if len(header) > 12 else "")
    fix = "check the name" if field else f"name the prompts' column: --field {header[0]!r}"
    if len(header) == 1 and not field:  # perhaps prompts with no header row at all
        fix = f"{fix} if that row names it, else add a first row 'prompt'"
    raise PromptFileError(
        f"--file {path} has no column {name!r} in its first row (it has {listed}): {fix}"
    )


def _json_lines(path: str, text: str) -> Iterator[tuple[int, Any]]:
    # Lines end at "\n" only: splitlines() also split at U+2028, which --out writes unescaped.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.lstrip(_BOM).strip()
        if not line:
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(
                f"--file {path}, line {number} is not JSON ({exc.msg}, column {exc.colno}): "
                "a .jsonl file holds one JSON string or object per line"
            ) from None


def _json_array(path: str, text: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(
            f"--file {path} is not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, list):
        raise PromptFileError(
            f"--file {path} holds a JSON {type(data).__name__}, not an array of prompts "
            '(["…", "…"] or [{"prompt": "…"}, …])'
        )
    return enumerate(data)


def _from_records(
    path: str, records: Iterable[tuple[int, Any]], field: str | None, unit: str
) -> list[tuple[str, str]]:
    """Each record's prompt: the record itself when it is a string, else its `field`."""
    name = field or DEFAULT_FIELD
    prompts = []
    for number, record in records:
        where = f"{unit} {number}"
        if isinstance(record, str) and field is None:
            prompts.append((where, _prompt(path, where, record)))
        elif isinstance(record, dict):
            if name not in record:
                keys = ", ".join(repr(k) for k in list(record)[:12]) or "none"
                fix = "check the name" if field else "name the prompts' field with --field"
                raise PromptFileError(
                    f"--file {path}, {where} has no field {name!r} (it has {keys}): {fix}"
                )
            value = record[name]
            if not isinstance(value, str):
                raise PromptFileError(
                    f"--file {path}, {where}: field {name!r} is {_kind(value)}, not text"
                )
            prompts.append((where, _prompt(path, where, value)))
        else:
            wanted = f"an object with a {name!r} field" if field else "a string or an object"
            raise PromptFileError(f"--file {path}, {where} is {_kind(record)}, not {wanted}")
    return prompts


def _prompt(path: str, where: str, value: str) -> str:
    """A structured file's prompt, as written (its lines kept); an empty one is refused: a
    skipped row would shift every later result against its row."""
    if not value.strip():
        raise PromptFileError(
            f"--file {path}, {where}: the prompt is empty: fill it in or delete it (it is not "
            "skipped, which would shift every later result against its row)"
        )
    return value.strip()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    return kinds.get(type(value), "an object" if isinstance(value, dict) else "text")


NAMES_FROM_JSON_UP_TO = 8 * 2**20
"""Tab on `--field` parses a whole .json array for its first object's keys: only a small one."""


def field_names(path: str) -> list[str]:
    """The columns or fields `--field` can name in `path` (for Tab): a CSV/TSV file's first
    row, the keys of a JSON Lines file's first object or of a small JSON array's; [] for any
    other file, or one that cannot be read."""
    suffix = Path(path).suffix.lower()
    file = Path(path).expanduser()
    try:
        if special_kind(file):  # a FIFO's open() waited for a writer, holding the kernel
            return []
        if suffix in DELIMITERS:
            with file.open(encoding="utf-8-sig", newline="") as f:
                return [n.strip() for n in next(csv.reader(f, delimiter=DELIMITERS[suffix]), [])]
        if suffix in JSON_LINES:
            with file.open(encoding="utf-8-sig") as f:
                first = next((line for line in f if line.strip()), "")
            record = json.loads(first) if first else None
        elif suffix in JSON and file.stat().st_size <= NAMES_FROM_JSON_UP_TO:
            records = json.loads(file.read_text(encoding="utf-8-sig"))
            record = records[0] if isinstance(records, list) and records else None
        else:
            return []
    except (OSError, ValueError, csv.Error):
        return []
    return [str(key) for key in record] if isinstance(record, dict) else []
