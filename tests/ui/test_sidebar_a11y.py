"""Accessibility of the "GPU memory" sidebar where only a browser can tell: opened from the
command palette it takes the focus; in Windows high contrast (forced colours) its bars and level
marks still show; under reduced motion its bars do not animate; with JupyterLab's UI font at
200% nothing is cut and the panel does not scroll sideways.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fake_nvml import FakeGpu, FakeNvml, GiB, child_env
from tests.ui.conftest import LabServer
from tests.ui.test_sidebar import FOCUSED, PANEL, row, screenshot, wait_until, watch_console

pytestmark = pytest.mark.ui

CUT = """panel => [...panel.querySelectorAll(
    'button, .q3j-gauge-value, .q3j-kernel-figures > span, .q3j-level-word'
)].filter(node =>
    node.scrollWidth > node.clientWidth + 1 || node.scrollHeight > node.clientHeight + 1
).map(node => node.textContent)"""
"""The texts of the panel's buttons and figures that do not fit in their box (cut)."""


def test_sidebar_in_forced_colours_at_a_200_percent_font(
    lab_server_factory: Callable[..., LabServer],
    scrollbar_page: Any,
    output_dir: Path,
    tmp_path: Path,
) -> None:
    fake = FakeNvml([FakeGpu(used=62 * GiB), FakeGpu(used=76 * GiB)])
    server = lab_server_factory(child_env(fake, tmp_path / "fake-nvml"))
    # JupyterLab's UI font at 200%, as its theme settings set it (13 px by default).
    overrides = {"overrides": {"ui-font-size1": "26px"}}
    server.api(
        "lab/api/settings/@jupyterlab/apputils-extension:themes",
        "PUT",
        {"raw": json.dumps(overrides)},
    )
    server.api(
        "api/sessions",
        "POST",
        {"path": "train.ipynb", "type": "notebook", "name": "train", "kernel": {"name": "python3"}},
    )
    page = scrollbar_page
    page.emulate_media(forced_colors="active", reduced_motion="reduce")
    errors = watch_console(page)
    page.goto(server.url("lab"), wait_until="domcontentloaded")
    page.locator(".jp-LauncherCard").first.wait_for(timeout=60_000)

    # "Show GPU Memory" from the command palette: the focus goes to the panel's heading (it
    # stayed where it was; the palette gives it back to the main area as it closes).
    page.keyboard.press("Control+Shift+c")
    page.keyboard.type("Show GPU Memory")
    page.get_by_text("Show GPU Memory").first.wait_for(timeout=10_000)
    page.keyboard.press("Enter")
    panel = page.locator(PANEL)
    panel.wait_for(state="visible", timeout=30_000)
    wait_until(lambda: page.evaluate(FOCUSED) == "h2.q3j-title", 5, "the focus on the heading")

    row(page, "train.ipynb").wait_for(timeout=60_000)
    gauges = panel.locator(".q3j-gauge")
    wait_until(lambda: gauges.count() == 3, 30, "two GPUs and the host")
    assert panel.locator(".q3j-level-word").all_inner_texts() == ["high", "critical"]
    screenshot(page, output_dir / "sidebar-forced-colors-200-percent.png")

    # 200%: buttons grow with their labels, figures wrap, nothing is cut or scrolls sideways.
    font = "() => getComputedStyle(document.body).getPropertyValue('--jp-ui-font-size1')"
    assert page.evaluate(font).strip() == "26px"
    assert panel.evaluate(CUT) == []
    assert panel.evaluate("node => node.scrollWidth <= node.clientWidth")

    # Forced colours: the bars have an outline, and fills and marks keep a system colour (every
    # background was replaced: the bars vanished). Reduced motion: the fills do not slide.
    bar = panel.locator(".q3j-bar").first
    assert bar.evaluate("node => getComputedStyle(node).borderTopWidth") == "1px"
    fill = bar.locator(".q3j-bar-fill")
    style = "node => getComputedStyle(node)"
    assert fill.evaluate(f"{style}.forcedColorAdjust") == "none"
    assert fill.evaluate(f"{style}.transitionDuration") == "0s"
    mark = "node => getComputedStyle(node, '::before').backgroundColor"
    assert panel.locator(".q3j-level-word").first.evaluate(mark) not in ("", "rgba(0, 0, 0, 0)")
    assert errors == []
