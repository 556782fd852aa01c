"""The notebooks a newcomer runs execute without error in a real kernel."""

from __future__ import annotations

from pathlib import Path

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


def test_decay_benchmark_notebook_executes(model_cache: Path, output_dir: Path) -> None:
    notebook = ROOT / "notebooks" / "decay-benchmark.ipynb"
    summaries, executed = run_notebook(notebook, output_dir / "notebooks", timeout=600)
    assert summaries and all(s.status == "ok" for s in summaries)
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the plot was not shown"
