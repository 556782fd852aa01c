"""The notebooks a newcomer runs execute without error in a real kernel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qwen3_jupyter.demo import format_summary, run_notebook

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_executes(model_cache: Path, output_dir: Path) -> None:
    notebook = ROOT / "notebooks" / "quickstart.ipynb"
    summaries, executed = run_notebook(notebook, output_dir / "notebooks", timeout=300)
    assert executed.exists()
    assert summaries and all(s.status == "ok" for s in summaries)
    assert any(s.tokens_per_s for s in summaries), "no %qwen3 footer reported tokens/s"
    assert all(s.rss_before and s.rss_after for s in summaries)
    text = format_summary(notebook, executed, summaries)
    assert "tok/s" in text and "->" in text
    assert not _empty_outputs(executed), "a status line stayed behind as an empty output"
    loads = [line for line in _printed(executed) if re.match(r"\[qwen3\] loaded \S+ \(", line)]
    assert len(loads) == 1 and loads[0].startswith("[qwen3] loaded tiny (float32) on cpu in "), (
        "the first call says it loaded the model, once"
    )


def _printed(executed: Path) -> list[str]:
    """Every line the saved notebook's cells printed."""
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    return [
        line
        for output in outputs
        if output.output_type == "stream"
        for line in output.text.splitlines()
    ]


def _empty_outputs(executed: Path) -> list[str]:
    """Displays the saved notebook keeps with nothing in them (cell index: source's start):
    the emptied status line of a call that loaded the model or compiled its decode step."""
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    return [
        f"{index}: {cell.source[:40]!r}"
        for index, cell in enumerate(cells)
        for output in cell.get("outputs", [])
        if output.output_type == "display_data"
        and not str(output.data.get("text/markdown", "x")).strip()  # (text/plain: a repr)
    ]


def test_decay_benchmark_notebook_executes(
    model_cache: Path, output_dir: Path, tmp_path: Path
) -> None:
    """The notebook as shipped, with fewer and shorter calls in its parameter cell: what the
    benchmark measures is checked by tests/test_decay_bench.py; this checks the notebook."""
    import nbformat

    notebook = nbformat.read(ROOT / "notebooks" / "decay-benchmark.ipynb", as_version=4)
    parameters = notebook.cells[1]
    assert parameters.source.startswith('MODEL = "tiny"\nCALLS = 10\n'), parameters.source
    parameters.source = 'MODEL = "tiny"\nCALLS = 2\nTOKENS = 4'
    copy = tmp_path / "notebooks" / "decay-benchmark.ipynb"
    copy.parent.mkdir()
    nbformat.write(notebook, copy)
    summaries, executed = run_notebook(copy, output_dir / "notebooks", timeout=600)
    assert summaries and all(s.status == "ok" for s in summaries)
    assert (tmp_path / "out" / "decay-tiny-cpu.png").exists()

    cells = nbformat.read(executed, as_version=4).cells
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the plot was not shown"


def test_a_failing_notebook_is_one_clean_line_and_leaves_no_kernel_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import nbformat
    import psutil

    from qwen3_jupyter.demo import main

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('boom')"),
    ]
    path = tmp_path / "fails.ipynb"
    nbformat.write(notebook, path)

    def running_kernels() -> set[int]:
        found = set()
        for child in psutil.Process().children(recursive=True):
            try:  # a child may end, or be a zombie, while it is looked at
                if child.status() != psutil.STATUS_ZOMBIE and "ipykernel" in " ".join(
                    child.cmdline()
                ):
                    found.add(child.pid)
            except psutil.Error:
                continue
        return found

    others = running_kernels()  # the suite's own (its spare kernel, say)
    assert main([str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "demo failed: CellExecutionError: ValueError: boom", err
    assert err[1] == f"the executed notebook (with the error) is {tmp_path / 'out' / path.name}"
    assert not running_kernels() - others, "the notebook's kernel outlived the demo"


def test_without_a_notebook_it_runs_the_quickstart_and_a_missing_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pip user has no notebooks/ folder: `python -m qwen3_jupyter.demo` needed one. A
    notebook path that does not exist said "the executed notebook is in out", and out/ was
    never made."""
    from qwen3_jupyter.demo import main, quickstart

    assert quickstart().name == "quickstart.ipynb" and quickstart().is_file()
    missing = tmp_path / "nowhere.ipynb"
    assert main([str(missing), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"demo: no notebook at {missing}"
    assert not (tmp_path / "out").exists()
