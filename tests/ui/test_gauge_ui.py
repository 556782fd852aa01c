"""The gauge in JupyterLab, in headless Chromium: it renders and its text moves with memory."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.ui.conftest import LabServer

pytestmark = pytest.mark.ui

HOST_TEXT = ".qwen3-gauge-row:last-child .qwen3-gauge-text"


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext qwen3_jupyter\n%qwen3_gauge --interval 0.2"),
        nbformat.v4.new_code_cell(
            "import time\n"
            "blocks = []\n"
            "for _ in range(6):\n"
            "    blocks.append(bytearray(b'x') * (128 * 2**20))\n"
            "    time.sleep(0.3)"
        ),
    ]
    nbformat.write(nb, path)


def _wait_idle(page: Any, timeout: float = 60) -> None:
    """Until the notebook's kernel says Idle (keys pressed earlier run nothing)."""
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=timeout * 1000
    )


def _run_cell(page: Any, index: int) -> None:
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and "Select Kernel" in dialog.inner_text():
        # JupyterLab asked which kernel to start, for a notebook that names one (once in a
        # full run, under load): its own choice is the notebook's kernel
        dialog.locator("button.jp-mod-accept").click()
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def _run_until(page: Any, index: int, selector: str, attempts: int = 3) -> None:
    """Run a cell until `selector` shows up (a keypress can be lost while the page settles)."""
    for attempt in range(attempts):
        _run_cell(page, index)
        try:
            page.locator(selector).first.wait_for(timeout=20_000)
            return
        except Exception:
            if attempt == attempts - 1:
                raise


def _open_with_a_gauge(page: Any, lab_server: LabServer, name: str, query: str = "") -> None:
    """Open a new notebook `name` (the gauge, then a cell filling memory) and show its gauge."""
    _notebook(lab_server.root_dir / name)
    page.goto(lab_server.url(f"lab/tree/{name}{query}"), wait_until="domcontentloaded")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    _wait_idle(page)
    _run_until(page, 0, HOST_TEXT)


@contextlib.contextmanager
def _screenshot_on_failure(page: Any, path: Path) -> Iterator[None]:
    try:
        yield
    except Exception:
        page.screenshot(path=str(path))
        raise


def _host_text(page: Any) -> str:
    return str(page.locator(HOST_TEXT).first.inner_text()).replace("\xa0", " ")


def test_gauge_renders_and_updates_in_jupyterlab(
    lab_server: LabServer, browser_page: Any, output_dir: Path
) -> None:
    page = browser_page
    with _screenshot_on_failure(page, output_dir / "gauge-jupyterlab-failed.png"):
        _open_with_a_gauge(page, lab_server, "gauge.ipynb")
    before = _host_text(page)
    assert " / " in before and "RSS" in before
    bar = page.locator(".qwen3-gauge-row:last-child .progress-bar")
    assert bar.count() == 1
    assert "progress-bar-" in str(bar.get_attribute("class"))  # coloured by threshold
    assert page.locator(".qwen3-gauge-row:last-child svg polyline").count() == 1  # sparkline
    _run_cell(page, 1)
    deadline = time.monotonic() + 20
    after = before
    while time.monotonic() < deadline and after == before:
        time.sleep(0.2)
        after = _host_text(page)
    page.screenshot(path=str(output_dir / "gauge-jupyterlab.png"))
    assert after != before, f"the gauge text did not change: {before!r}"
    live = page.locator(".qwen3-gauge .qwen3-gauge-live").first
    assert live.inner_text().startswith(("NVML unavailable", "NVML ·"))
    stale = page.locator(".qwen3-gauge .qwen3-gauge-stale").first
    assert _opacity(stale) == 0.0, "a live gauge shows no stale warning"
    assert _visibility(stale) == "hidden", "nor reads it out (a screen reader skips hidden)"
    readings = page.locator(".qwen3-gauge .qwen3-gauge-readings").first
    assert _opacity(readings) == 1.0
    # The kernel goes away: nothing tells the widget, so the gauge must notice by itself.
    _wait_idle(page)
    (session,) = [s for s in lab_server.api("api/sessions") if s["path"] == "gauge.ipynb"]
    lab_server.api(f"api/kernels/{session['kernel']['id']}", method="DELETE")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _opacity(stale) < 1.0:
        time.sleep(0.5)
    page.screenshot(path=str(output_dir / "gauge-jupyterlab-stale.png"))
    assert _opacity(stale) == 1.0, "the gauge still looks live after its kernel was shut down"
    assert "not updated since" in stale.inner_text() and _visibility(stale) == "visible"
    assert _opacity(live) < 1.0 and _opacity(readings) < 1.0  # the readings are dimmed


def test_a_restarted_kernels_gauge_has_one_broken_link_mark_not_one_per_widget(
    lab_server: LabServer, browser_page: Any, output_dir: Path
) -> None:
    """Kernel > Restart: ipywidgets marks each widget of the old kernel with a red broken-link
    icon, nine down the gauge; the outer box keeps the one (labextension/style/base.css)."""
    page = browser_page
    with _screenshot_on_failure(page, output_dir / "gauge-restart-failed.png"):
        # ?reset: a workspace without the notebooks of earlier tests (their cells came first)
        _open_with_a_gauge(page, lab_server, "restarted.ipynb", "?reset")
        _wait_idle(page)
        page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel…").first.click()
        page.locator(".jp-Dialog button.jp-mod-accept").first.click()
    deadline = time.monotonic() + 20
    marks = _broken_link_marks(page)
    while time.monotonic() < deadline and marks["marked"] < 2:
        time.sleep(0.5)
        marks = _broken_link_marks(page)
    page.screenshot(path=str(output_dir / "gauge-jupyterlab-disconnected.png"))
    assert marks["marked"] >= 2, f"control: ipywidgets marked the gauge's widgets: {marks}"
    assert marks["shown"] <= 1, f"a broken-link icon on each widget: {marks}"


def _broken_link_marks(page: Any) -> dict[str, int]:
    """How many of the gauge's widgets (its box included) ipywidgets marked disconnected, and
    on how many of them the mark's icon shows."""
    result: dict[str, int] = page.evaluate(
        """() => {
            const gauge = document.querySelector('.qwen3-gauge');
            if (!gauge) { return {marked: 0, shown: 0}; }
            const all = [gauge, ...gauge.querySelectorAll('*')].filter(
                e => e.classList.contains('jupyter-widgets-disconnected'));
            const shown = all.filter(e => {
                const content = getComputedStyle(e, '::before').content;
                return content && content !== 'none' && content !== 'normal';
            });
            return {marked: all.length, shown: shown.length};
        }"""
    )
    return result


def _opacity(locator: Any) -> float:
    return float(_computed(locator, "opacity"))


def _visibility(locator: Any) -> str:
    return _computed(locator, "visibility")


def _computed(locator: Any, name: str) -> str:
    """The element's computed style `name`. The gauge redraws its footer at every heartbeat:
    an element replaced between Playwright finding it and reading its style reads ''
    (detached), so the locator finds it again."""
    deadline = time.monotonic() + 5
    script = f"e => e.isConnected ? getComputedStyle(e).{name} : ''"
    while True:
        value = str(locator.evaluate(script))
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
