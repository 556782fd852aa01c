"""`%qwen3 --file` reads prompts from text, CSV/TSV and JSON Lines/JSON files: a column or a
field, never the file's syntax. (Read line by line, a CSV sent its header and its quotes to the
model as prompts, and a .jsonl its braces.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qwen3_jupyter.prompt_files import PromptFileError, field_names, read_prompts
from tests.kernel import Kernel, ok


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_csv_gives_its_prompt_column_with_quotes_commas_and_lines_intact(
    tmp_path: Path,
) -> None:
    table = write(
        tmp_path / "reviews.csv",
        'id,prompt,score\n1,"Summarise: good, cheap",5\n2,"Two lines:\nfirst\nsecond",3\n\n',
    )
    assert read_prompts(table) == ["Summarise: good, cheap", "Two lines:\nfirst\nsecond"]
    assert read_prompts(table, "id") == ["1", "2"]
    tabs = write(tmp_path / "r.tsv", "text\tlabel\nhello, world\t1\n")
    assert read_prompts(tabs, "text") == ["hello, world"]


def test_a_csv_a_spreadsheet_saved_with_semicolons_or_tabs_gives_its_column(
    tmp_path: Path,
) -> None:
    """Read with commas, `prompt;score` was one column, and the advice (`--field
    'prompt;score'`) sent `Hello;1` as the prompt."""
    semicolons = write(tmp_path / "eu.csv", 'prompt;score\nHello;1\n"a; b, c";2\n')
    assert read_prompts(semicolons) == ["Hello", "a; b, c"]
    assert read_prompts(write(tmp_path / "tabs.csv", "prompt\tscore\nHi\t1\n")) == ["Hi"]
    one_column = write(tmp_path / "one.csv", "prompt\nuse a; here\n")
    assert read_prompts(one_column) == ["use a; here"]  # a header with no delimiter: commas


def test_json_lines_give_strings_or_a_field_and_a_results_file_can_be_asked_again(
    tmp_path: Path,
) -> None:
    strings = write(tmp_path / "a.jsonl", '"first"\n\n"second {x}"\n')
    assert read_prompts(strings) == ["first", "second {x}"]
    records = write(tmp_path / "b.jsonl", '{"question": "Why?", "id": 1}\n{"question": "How?"}\n')
    assert read_prompts(records, "question") == ["Why?", "How?"]
    # What --out writes has a "prompt" field: the default.
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"index": 0, "prompt": "again", "answer": "x"}) + "\n")
    assert read_prompts(str(results)) == ["again"]
    # A line separator (U+2028, pasted from the web) is text: --out writes it unescaped.
    pasted = tmp_path / "pasted.jsonl"
    lines = [{"index": i, "prompt": p} for i, p in enumerate(["first\u2028second", "b\x85c"])]
    pasted.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    assert read_prompts(str(pasted)) == ["first\u2028second", "b\x85c"]
    pasted_text = write(tmp_path / "pasted.txt", "first\nform\x0cfeed\nline\u2028sep\n")
    assert read_prompts(pasted_text) == ["first", "form\x0cfeed", "line\u2028sep"]
    array = write(tmp_path / "c.json", '[{"prompt": "one"}, {"prompt": "two\\nlines"}]')
    assert read_prompts(array) == ["one", "two\nlines"]


@pytest.mark.parametrize(
    ("name", "text", "field", "said"),
    [
        (
            "r.csv",
            "review,score\ngood,1\n",
            None,
            "has no column 'prompt' in its first row (it has 'review', 'score'): name the "
            "prompts' column: --field 'review'",
        ),
        (
            "r.csv",
            "prompt,score\n,1\n",
            None,
            "r.csv, line 2: the prompt is empty: fill it in or delete it (it is not skipped",
        ),
        (
            "r.csv",
            "Why?\nHow?\n",
            None,
            "(it has 'Why?'): name the prompts' column: --field 'Why?' if that row names it, "
            "else add a first row 'prompt'",
        ),
        ("r.csv", "prompt\n", None, "holds no prompts (no rows)"),
        (
            "r.jsonl",
            '{"text": "hi", "label": 1}\n',
            None,
            "r.jsonl, line 1 has no field 'prompt' (it has 'text', 'label'): name the prompts' "
            "field with --field",
        ),
        ("r.jsonl", '"ok"\n{"prompt": 1}\n', None, "line 2: field 'prompt' is a number, not text"),
        ("r.jsonl", '"ok"\n{"prompt": "a",\n', None, "r.jsonl, line 2 is not JSON (Expecting"),
        ("r.jsonl", '"ok"\n["a"]\n', None, "line 2 is a list, not a string or an object"),
        ("r.json", '{"prompt": "a"}', None, "holds a JSON dict, not an array of prompts"),
        ("r.txt", "a\n", "text", "--field picks a column of a .csv/.tsv or a field of a .jsonl"),
        ("r.xlsx", "PK", None, "not .xlsx: save /"),
        (  # not strict, csv took the rest of the file as one prompt: 1 prompt, not 3
            "r.csv",
            'prompt,x\nok,0\n"a,1\nb,2\nc,3\n',
            None,
            "r.csv, line 3: a quoted field is never closed (the rest of the file would be one "
            'prompt): close it, or write a quote inside it as ""',
        ),
        (
            "r.tsv",
            'prompt\tx\n"Hello," she said\t1\n',
            None,
            "r.tsv, line 2: '\t' expected after '\"' (a field that starts with a quote ends "
            'with one: write a quote inside it as "")',
        ),
    ],
)
def test_a_file_that_is_not_prompts_is_one_line_naming_where_and_what_to_do(
    tmp_path: Path, name: str, text: str, field: str | None, said: str
) -> None:
    with pytest.raises(PromptFileError) as raised:
        read_prompts(write(tmp_path / name, text), field)
    message = str(raised.value)
    assert said in message and "\n" not in message, message


def test_only_a_regular_file_is_read(kernel: Kernel, tmp_path: Path) -> None:
    """`--file /dev/zero` read until a MemoryError (a 25-line traceback, the machine's memory
    gone first); a FIFO with no writer held the cell, and Tab after `--field` the kernel. (A
    terminal's pipe is still read: `printf … | ipython -c '%qwen3 --file /dev/stdin'`.)"""
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    for path, what in ((Path("/dev/zero"), "a device"), (tmp_path, "a folder")):
        with pytest.raises(PromptFileError, match=f"^--file {path} is {what}"):
            read_prompts(str(path))
    assert field_names(str(fifo)) == []
    refused = kernel.run(f"%qwen3 --file {fifo} --max-new-tokens 2")
    assert refused.stderr.strip() == (
        f"UsageError: --file {fifo} is a pipe, not a file of prompts"
    ), refused.stderr


def test_tab_on_field_lists_what_the_file_can_name(tmp_path: Path) -> None:
    """Tab after `--field` (tests/test_magics.py drives it in a kernel): a table's first row,
    a JSON Lines file's first object's keys, a small JSON array's; nothing for other files."""
    assert field_names(write(tmp_path / "t.tsv", "a b\tc\n1\t2\n")) == ["a b", "c"]
    assert field_names(write(tmp_path / "r.jsonl", '\n{"prompt": "x", "id": 1}\n')) == [
        "prompt",
        "id",
    ]
    assert field_names(write(tmp_path / "r.json", '[{"q": "x"}]')) == ["q"]
    assert field_names(write(tmp_path / "p.txt", "a\n")) == []
    assert field_names(write(tmp_path / "bad.jsonl", "{not json\n")) == []
    assert field_names(str(tmp_path / "missing.csv")) == []


def test_the_magic_asks_a_csv_column_and_refuses_a_wrong_one_in_one_line(
    kernel: Kernel, tmp_path: Path
) -> None:
    table = write(tmp_path / "data.csv", 'id,text\n1,"Say hi, briefly"\n2,"Two\nlines"\n')
    run = "--greedy --no-think --max-new-tokens 1"
    ok(kernel, f"%qwen3 --file {table} --field text {run}")
    assert kernel.value("[r.prompt for r in _qwen3]") == ["Say hi, briefly", "Two\nlines"]
    for line, said in (
        (f"%qwen3 --file {table} {run}", "has no column 'prompt' in its first row"),
        (f"%qwen3 --field text {run} hi", "--field goes with --file PROMPTS.csv"),
    ):
        ex = kernel.run(line)
        assert ex.status == "error"
        (error,) = ex.stderr.strip().splitlines()
        assert error.startswith("UsageError: ") and said in error, error
    assert kernel.value("[r.prompt for r in _qwen3]") == ["Say hi, briefly", "Two\nlines"]


def test_a_prompt_too_long_is_named_by_its_file_and_line(kernel: Kernel, tmp_path: Path) -> None:
    """It was `prompt 2 (6,398 tokens) + ...`: its position among the prompts, counted from
    0, with blank lines and rows of many lines not counted, which a user reading the file
    cannot find."""
    long = "word " * 5000
    text = write(tmp_path / "p.txt", f"first\n\nsecond\n\n{long}\n")
    table = write(tmp_path / "p.csv", f'prompt\nfirst\n"two\nlines"\n\n{long}\n')
    for path, line in ((text, 5), (table, 6)):
        ex = kernel.run(f"%qwen3 --file {path} --no-think --max-new-tokens 3")
        (error,) = ex.stderr.strip().splitlines()
        assert error.startswith(f"UsageError: --file {path}, line {line}: the prompt ("), error
        assert error.endswith(
            "exceeds the 4,096 positions of tiny: shorten it or lower --max-new-tokens"
        ), error
    assert read_prompts(table).where == ["line 2", "line 3", "line 6"]


def test_a_path_with_a_space_left_unquoted_is_told_to_be_quoted(
    kernel: Kernel, tmp_path: Path
) -> None:
    """`--file data/my prompts.txt` read `data/my` as the file and `prompts.txt` as a
    prompt: the advice given (options first, or a prompt or --file) led to another error."""
    spaced = write(tmp_path / "my prompts.txt", "hi\n")
    split = str(tmp_path / "my")
    ex = kernel.run(f"%qwen3 --file {split} prompts.txt --max-new-tokens 2")
    (error,) = ex.stderr.strip().splitlines()
    assert error == (
        f"UsageError: --file {split}: no such file, but {spaced!r} is one: quote a path with "
        f"spaces, --file '{spaced}'"
    ), error
    ok(kernel, f"%qwen3 --file '{spaced}' --greedy --max-new-tokens 2")


def test_a_terminal_reads_prompts_piped_into_it(model_cache: Path) -> None:
    """`printf … | ipython -c '%qwen3 --file /dev/stdin'`: a pipe outside a kernel has its
    writer, so it is read (refused as "a pipe" it broke a shell pipeline that worked)."""
    import subprocess
    import sys

    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "IPython",
            "--no-banner",
            "--ext",
            "qwen3_jupyter",
            "-c",
            "%qwen3 --model tiny --file /dev/stdin --no-think --max-new-tokens 2\n"
            "print('asked', len(_qwen3))",
        ],
        input="hi\nthere\n",
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ran.returncode == 0 and "asked 2" in ran.stdout, (ran.stdout, ran.stderr[-2000:])
