"""The "GPU memory" sidebar in JupyterLab, in headless Chromium, against a real server.

No GPU here: the first test drives the real no-GPU path (host memory, per-notebook RSS) through
a notebook that allocates memory, "Free memory", the load-the-extension hint and "Shut down".
The second starts a server whose NVML is the fake (one GPU) to show the GPU gauge and the
status-bar item; the third, the empty states of a server without the server extension and of a
server that went away. Screenshots go to test-output/.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from qwen3_jupyter.bench._server import ready_client
from tests.fake_nvml import SELF, FakeGpu, FakeNvml, FakeProcess, GiB, child_env
from tests.ui.conftest import LabServer

pytestmark = pytest.mark.ui

PANEL = "#qwen3-jupyter-gpu-memory"
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_size(text: str) -> int | None:
    """ "RSS 512.3 MiB" -> bytes; None for "unknown"."""
    match = re.search(r"([\d.]+) (B|KiB|MiB|GiB|TiB)", text)
    return int(float(match.group(1)) * UNITS[match.group(2)]) if match else None


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


def run_cell(page: Any, index: int) -> None:
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def screenshot(page: Any, path: Path) -> None:
    """Save a screenshot without JupyterLab's "get notified about news?" toast over it."""
    no_news = page.get_by_role("button", name="No", exact=True)
    if no_news.count():
        with contextlib.suppress(Exception):  # covered by a modal dialog: leave it
            no_news.first.click(timeout=2000)
            no_news.first.wait_for(state="detached", timeout=3000)
    page.screenshot(path=str(path))


def watch_console(page: Any) -> list[str]:
    """Errors the page logs that mention this extension (none expected)."""
    errors: list[str] = []
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type in ("error", "warning") and "qwen3" in msg.text.lower()
            else None
        ),
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def open_sidebar_on(
    fake: FakeNvml, lab_server_factory: Any, tmp_path: Path, page: Any
) -> tuple[Any, list[str], Any]:
    """A Lab server whose NVML is `fake`, its page open with the sidebar shown: the server,
    the console errors being watched, and the panel."""
    server = lab_server_factory(child_env(fake, tmp_path / "fake-nvml"))
    errors = watch_console(page)
    page.goto(server.url("lab"), wait_until="domcontentloaded")
    return server, errors, open_sidebar(page)


def open_sidebar(page: Any) -> Any:
    """Open the "GPU memory" tab of the left sidebar."""
    page.locator('.jp-SideBar li[data-id="qwen3-jupyter-gpu-memory"]').click()
    panel = page.locator(PANEL)
    panel.wait_for(state="visible", timeout=30_000)
    return panel


def row(page: Any, notebook: str) -> Any:
    return page.locator(f"{PANEL} .q3j-kernel", has=page.locator(f'button[title="{notebook}"]'))


def click_free(page: Any, notebook: str, keyboard: bool = False) -> None:
    """Click "Free memory" once the sidebar's own poll has seen the extension in that kernel
    (with `keyboard`, focus it and press Enter).

    Until then the button shows how to load the extension, and a click shows that hint: a click
    right after the server saw the extension lost that race once in a full run."""
    loaded = 'button.q3j-free[title="Run qwen3_jupyter.cleanup() in this kernel"]'
    button = row(page, notebook).locator(loaded)
    button.wait_for(timeout=30_000)
    if keyboard:
        button.focus()
        page.keyboard.press("Enter")
    else:
        button.click()


FOCUSED = """() => {
    const e = document.activeElement;
    return e ? `${e.tagName.toLowerCase()}.${[...e.classList].join('.')}` : 'none';
}"""
"""What has the keyboard focus, as "tag.class.class"."""


def rss(page: Any, notebook: str) -> int | None:
    locator = row(page, notebook).locator(".q3j-kernel-rss")
    return parse_size(locator.inner_text()) if locator.count() else None


GROW = """\
import time, torch

def grow(steps=4, mib=100):
    chunks = []
    for _ in range(steps):
        chunks.append(torch.ones(mib * 2**20 // 4))
        time.sleep(1.0)
    return torch.cat(chunks)

grow()  # the result lives on only in the output cache (Out, _)
"""


def test_sidebar_shows_notebook_memory_and_frees_it(
    lab_server_factory: Callable[..., LabServer], browser_page: Any, output_dir: Path
) -> None:
    server = lab_server_factory()
    write_notebook(server.root_dir / "memory.ipynb", ["%load_ext qwen3_jupyter", GROW])
    write_notebook(server.root_dir / "plain.ipynb", ["x = 1"])
    page = browser_page
    errors = watch_console(page)
    page.goto(server.url("lab/tree/memory.ipynb"), wait_until="domcontentloaded")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    panel = open_sidebar(page)

    # No GPU on this machine: the panel says so and shows host memory.
    panel.get_by_text("No GPU to show").wait_for(timeout=30_000)
    assert "Showing host memory" in panel.locator(".q3j-empty").first.inner_text()
    assert "Host memory" in panel.locator('[data-testid="q3j-host"]').inner_text()

    row(page, "memory.ipynb").wait_for(timeout=60_000)
    run_cell(page, 0)
    run_cell(page, 1)
    # The row's RSS climbs while the cell allocates 100 MiB a second.
    seen: list[int] = []

    def grown() -> bool:
        value = rss(page, "memory.ipynb")
        if value is not None and (not seen or value != seen[-1]):
            seen.append(value)
        return len(seen) >= 3 and seen[-1] - seen[0] > 150 * 2**20

    wait_until(grown, 90, "the notebook's RSS to grow")
    screenshot(page, output_dir / "sidebar-growing.png")
    page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea-output").wait_for(
        timeout=60_000
    )
    time.sleep(2.5)  # two polls after the cell finished
    before = rss(page, "memory.ipynb")
    assert before is not None and before > 400 * 2**20, seen
    screenshot(page, output_dir / "sidebar-before-free.png")

    click_free(page, "memory.ipynb")
    status = row(page, "memory.ipynb").locator(".q3j-kernel-status")
    wait_until(lambda: "Freed" in (status.inner_text() if status.count() else ""), 60, "Freed")
    freed = parse_size(status.inner_text())
    assert freed is not None and freed > 300 * 2**20, status.inner_text()
    after = wait_until(
        lambda: (v := rss(page, "memory.ipynb")) is not None and v < before - 300 * 2**20 and v,
        30,
        "the RSS to drop after Free memory",
    )
    screenshot(page, output_dir / "sidebar-after-free.png")
    print(f"RSS before {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")

    # A kernel without the extension: the action explains how to load it, runs nothing.
    server.api(
        "api/sessions",
        "POST",
        {"path": "plain.ipynb", "type": "notebook", "name": "plain", "kernel": {"name": "python3"}},
    )
    row(page, "plain.ipynb").wait_for(timeout=60_000)
    row(page, "plain.ipynb").locator("button.q3j-free").click()
    hint = row(page, "plain.ipynb").locator(".q3j-kernel-status")
    hint.wait_for(timeout=10_000)
    assert "%load_ext qwen3_jupyter" in hint.inner_text()
    screenshot(page, output_dir / "sidebar-load-hint.png")

    # "Shut down" asks first, then the kernel and its row go away.
    plain_kernels = [
        s["kernel"]["id"] for s in server.api("api/sessions") if s["path"] == "plain.ipynb"
    ]
    row(page, "plain.ipynb").locator("button.q3j-shutdown").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    assert "plain.ipynb" in dialog.inner_text()
    screenshot(page, output_dir / "sidebar-shutdown-confirm.png")
    dialog.locator("button.jp-mod-accept").click()
    row(page, "plain.ipynb").wait_for(state="detached", timeout=30_000)
    running = {k["id"] for k in server.api("api/kernels")}
    assert not running & set(plain_kernels)
    assert errors == []


SLOW_WIDGET_CELL = """\
import time, ipywidgets
time.sleep(12)  # "Free memory" is clicked meanwhile: it waits for this cell
slider = ipywidgets.IntSlider(value=1)
slider
"""


def test_free_memory_during_a_cell_leaves_the_widgets_it_creates_working(
    lab_server_factory: Callable[..., LabServer], browser_page: Any, output_dir: Path
) -> None:
    """Clicked while a cell runs, "Free memory" waits for the cell, then frees; the widget the
    cell created meanwhile still talks to the kernel (its comm was not closed by the sidebar's
    own kernel connection, which has no widget target)."""
    server = lab_server_factory()
    write_notebook(
        server.root_dir / "widgets.ipynb",
        ["%load_ext qwen3_jupyter", SLOW_WIDGET_CELL, "print('kernel sees', slider.value)"],
    )
    page = browser_page
    errors = watch_console(page)
    page.goto(server.url("lab/tree/widgets.ipynb"), wait_until="domcontentloaded")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    panel = open_sidebar(page)
    row(page, "widgets.ipynb").wait_for(timeout=60_000)
    run_cell(page, 0)
    page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".jp-InputPrompt").get_by_text(
        "[1]:"
    ).wait_for(timeout=60_000)
    run_cell(page, 1)
    status = row(page, "widgets.ipynb").locator(".q3j-kernel-status")
    row(page, "widgets.ipynb").locator(".q3j-state-busy").wait_for(timeout=30_000)
    click_free(page, "widgets.ipynb")
    shown: list[str] = []

    def waiting() -> bool:
        shown.append(status.inner_text() if status.count() else "")
        return "Waiting for the running cell" in shown[-1]

    try:
        wait_until(waiting, 10, "the sidebar to say it waits for the running cell")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it said {shown[-3:]}") from None
    readout = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".widget-readout")
    readout.wait_for(timeout=60_000)
    answer = status.locator(".q3j-status-text")
    wait_until(
        lambda: answer.count() and answer.inner_text().startswith(("Freed", "Nothing to free")),
        60,
        "the cleanup's answer",
    )
    # The user moves the slider (its readout is editable); the kernel must hear of it, which
    # it does not once the widget's comm was closed: the kernel drops messages for it.
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("5")
    page.keyboard.press("Enter")
    wait_until(lambda: readout.inner_text().strip() == "5", 10, "the readout to show 5")
    run_cell(page, 2)
    output = page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-OutputArea-output")
    output.wait_for(timeout=30_000)
    assert output.inner_text().strip() == "kernel sees 5", output.inner_text()
    screenshot(page, output_dir / "sidebar-free-beside-widgets.png")
    assert panel.is_visible()
    assert errors == []


def test_sidebar_and_status_bar_show_a_gpu(
    lab_server_factory: Callable[..., LabServer],
    browser_page: Any,
    output_dir: Path,
    tmp_path: Path,
) -> None:
    fake = FakeNvml([FakeGpu(used=3 * GiB, utilization=42, processes=[FakeProcess(SELF, 3 * GiB)])])
    page = browser_page
    server, errors, panel = open_sidebar_on(fake, lab_server_factory, tmp_path, page)
    settings = server.api("lab/api/settings/qwen3-jupyter:plugin")
    assert settings["schema"]["properties"]["pollInterval"]["default"] == 1000
    gauge = panel.locator('[data-testid="q3j-gpu-0"]')
    gauge.wait_for(timeout=30_000)
    text = gauge.inner_text()
    assert "GPU 0 · NVIDIA H100 80GB HBM3" in text and "3.0 / 80.0 GiB" in text, text
    assert "util 42%" in text
    assert "Other processes: 3.0 GiB VRAM" in panel.inner_text()
    panel.get_by_text("No running kernels").wait_for(timeout=10_000)
    status = page.locator(".q3j-status")
    assert status.inner_text() == "GPU 3.0 / 80.0 GiB"
    # The status-bar item works from the keyboard: in the Tab order, labelled, and Enter opens
    # the sidebar as a click does.
    assert status.evaluate("node => node.tabIndex") == 0
    assert "GPU 3.0 / 80.0 GiB" in (status.get_attribute("aria-label") or "")
    page.locator('.jp-SideBar li[data-id="qwen3-jupyter-gpu-memory"]').click()  # collapse it
    panel.wait_for(state="hidden", timeout=10_000)
    status.focus()
    page.keyboard.press("Enter")
    panel.wait_for(state="visible", timeout=10_000)
    # The focus follows into the panel (it stayed on the status bar).
    wait_until(lambda: page.evaluate(FOCUSED) == "h2.q3j-title", 5, "the focus on the heading")
    meter = panel.locator('[data-testid="q3j-gpu-0"] [role="meter"]')
    assert meter.get_attribute("aria-valuenow") == "4"  # percent, not bytes
    assert meter.get_attribute("aria-valuemax") == "100"
    assert meter.get_attribute("aria-valuetext") == "3.0 of 80.0 GiB, 4%"
    server.api(
        "api/sessions",
        "POST",
        {"path": "train.ipynb", "type": "notebook", "name": "train", "kernel": {"name": "python3"}},
    )
    row(page, "train.ipynb").wait_for(timeout=60_000)
    vram = row(page, "train.ipynb").locator(".q3j-kernel-vram")
    assert vram.inner_text() == "VRAM 0 B"  # NVML lists the server, not this kernel

    # "Free memory" on a kernel no open notebook is connected to: the sidebar opens its own
    # kernel connection for the comm.
    (kernel,) = [s["kernel"]["id"] for s in server.api("api/sessions")]
    runtime = server.root_dir.parent / f"{server.root_dir.name}-jupyter-state" / "runtime"
    client = ready_client(runtime / f"kernel-{kernel}.json")
    try:
        assert (
            client.execute_interactive("%load_ext qwen3_jupyter", timeout=60)["content"]["status"]
            == "ok"
        )
        wait_until(
            lambda: all(
                k["extension_loaded"] for k in server.api("qwen3-jupyter/metrics")["kernels"]
            ),
            30,
            "the server to see the extension loaded",
        )
        free = row(page, "train.ipynb").locator("button.q3j-free")
        assert free.get_attribute("aria-label") == "Free memory of train.ipynb"
        click_free(page, "train.ipynb", keyboard=True)
        status_line = row(page, "train.ipynb").locator(".q3j-kernel-status .q3j-status-text")

        def answered() -> bool:
            if not status_line.count():
                return False
            text = str(status_line.inner_text())
            return text == "Nothing to free" or text.startswith("Freed")

        wait_until(answered, 60, "the cleanup reply")
        assert "cleanup" in row(page, "train.ipynb").locator(".q3j-status-detail").inner_text()
        # The focus stayed on the button (a disabled button dropped it to <body>), and the
        # answer went to screen readers.
        assert page.evaluate(FOCUSED) == "button.jp-mod-styled.q3j-free"
        announced = panel.locator('[aria-live="polite"]').inner_text()
        assert announced == f"train.ipynb: {status_line.inner_text()}", announced
        screenshot(page, output_dir / "sidebar-fake-gpu.png")
        shut_down_while_free_memory_waits(page, server, client, kernel, output_dir)
    finally:
        client.stop_channels()
    assert errors == []


def shut_down_while_free_memory_waits(
    page: Any, server: LabServer, client: Any, kernel: str, output_dir: Path
) -> None:
    """A cell that runs on: "Free memory" waits for it, and "Shut down" is the way out. It was
    disabled (and looked enabled) for as long as the cell ran."""
    client.execute("import time; time.sleep(600)")
    train = row(page, "train.ipynb")
    train.locator(".q3j-state-busy").wait_for(timeout=30_000)
    click_free(page, "train.ipynb")
    train.get_by_text("Waiting for the running cell").wait_for(timeout=10_000)
    free, shutdown = train.locator("button.q3j-free"), train.locator("button.q3j-shutdown")
    assert free.is_disabled() and shutdown.is_enabled()
    # aria-disabled, not disabled: the clicked button keeps the focus.
    assert free.get_attribute("aria-disabled") == "true" and free.get_attribute("disabled") is None
    assert page.evaluate(FOCUSED) == "button.jp-mod-styled.q3j-free"
    opacity = "node => Number(getComputedStyle(node).opacity)"
    assert free.evaluate(opacity) < 1 and shutdown.evaluate(opacity) == 1
    screenshot(page, output_dir / "sidebar-free-waits.png")
    shutdown.click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    dialog.locator("button.jp-mod-accept").click()
    said: list[str] = []

    def gone() -> bool:
        status = train.locator(".q3j-status-text")
        with contextlib.suppress(Exception):  # the row may go between the two calls
            said.append(status.inner_text(timeout=500) if status.count() else "")
        return train.count() == 0

    wait_until(gone, 30, "the row of the kernel shut down to go")
    # The shutdown ends the cleanup's wait; that is no failure to report.
    assert not [text for text in said if "failed" in text], said
    assert kernel not in {k["id"] for k in server.api("api/kernels")}


def test_a_lost_gpu_stays_in_the_sidebar_and_turns_the_status_bar_red(
    lab_server_factory: Callable[..., LabServer],
    browser_page: Any,
    output_dir: Path,
    tmp_path: Path,
) -> None:
    """GPU 0 lost, GPU 1 at 88%: the sidebar keeps a row for GPU 0 that says it is lost (not
    "No GPU to show"), and the status bar says "GPU 0 lost" after a mark in the error colour
    (its text in the bar's own colour: red text was under 4.5:1), and "critical" to screen
    readers. GPU 1's gauge says "high" in text, and its meter the figures and the level."""
    fake = FakeNvml([FakeGpu(lost=True), FakeGpu(used=70 * GiB)])
    page = browser_page
    _, errors, panel = open_sidebar_on(fake, lab_server_factory, tmp_path, page)
    lost = panel.locator('[data-testid="q3j-gpu-unread-0"]')
    lost.wait_for(timeout=30_000)
    assert "GPU 0 — could not be read (GPU is lost)" in lost.inner_text()
    assert "reboot" in lost.inner_text()
    assert "No GPU to show" not in panel.inner_text()
    gpu1 = panel.locator('[data-testid="q3j-gpu-1"]')
    gpu1.wait_for(timeout=10_000)
    assert gpu1.locator(".q3j-level-word").inner_text() == "high"
    meter = gpu1.locator('[role="meter"]')
    assert meter.get_attribute("aria-valuetext") == "70.0 of 80.0 GiB, 88%, high"
    status = page.locator(".q3j-status")
    assert status.inner_text() == "GPU 0 lost"
    assert status.get_attribute("data-level") == "critical"
    assert (status.get_attribute("aria-label") or "").endswith("GPU 0 lost (critical)")
    mark = "node => getComputedStyle(node, '::before').backgroundColor"
    assert status.evaluate(mark) not in ("", "rgba(0, 0, 0, 0)")
    assert "GPU 1: 70.0 / 80.0 GiB (88%)" in (status.get_attribute("title") or "")
    screenshot(page, output_dir / "sidebar-gpu-lost.png")
    assert errors == []


WHOLE = """node => {
    const text = document.createRange();
    text.selectNodeContents(node);
    return text.getBoundingClientRect().width <= node.getBoundingClientRect().width + 0.01;
}"""
"""Whether an element shows its text whole: no ellipsis (the text is no wider than the box;
scrollWidth and clientWidth are rounded, and a tail shrunk by a fraction of a pixel already
lost its last characters to the ellipsis)."""


FOLDER_END_SHOWS = """node => {
    const text = document.createRange();
    text.selectNodeContents(node);
    const [shown, whole] = [node.getBoundingClientRect(), text.getBoundingClientRect()];
    return {cut: whole.width > shown.width + 1, endShows: whole.right <= shown.right + 0.5};
}"""
"""Whether a folder line is cut (its text wider than its box) and still shows its end."""

BUTTONS_FIT = """row => [...row.querySelectorAll('.q3j-kernel-actions button')].map(button => {
    const [box, line] = [button.getBoundingClientRect(), row.getBoundingClientRect()];
    return {
        label: button.textContent,
        oneLine: button.scrollHeight <= button.clientHeight,
        inRow: box.top >= line.top - 0.5 && box.bottom <= line.bottom + 0.5,
    };
})"""
"""Each row button: on one line in its height, and inside its row (not over the next one)."""


def test_long_names_show_what_tells_them_apart_and_a_console_is_no_link(
    lab_server_factory: Callable[..., LabServer],
    scrollbar_page: Any,
    output_dir: Path,
    tmp_path: Path,
) -> None:
    """Six rows at 1366x768, scrollbar shown (it narrows the panel). Two CamelCase names
    differing at their end: each row shows that end whole (both read "FineTuneLlamaExper…"
    when a name without separators was one word, cut at its end). Two train.ipynb in long
    folders: each folder line shows its last folder ("run_a", "run_b"; both were cut at their
    end). A long name alone keeps its end ("…name_v1.ipynb", not "experiment_run_2026_1…").
    Every row's buttons stay on one line inside the row (they wrapped, and "memory" and "down"
    were drawn over the next row). A kernel only a console uses is named after the console,
    and its name opens nothing (it was a link to the console's path, a file that does not
    exist: an error dialog)."""
    fake = FakeNvml([FakeGpu(used=20 * GiB)])
    page = scrollbar_page
    server, errors, panel = open_sidebar_on(fake, lab_server_factory, tmp_path, page)
    folder = "projects/2026/very_long_folder_name_for_experiments"
    twins = [f"{folder}/run_a/train.ipynb", f"{folder}/run_b/train.ipynb"]
    names = ["FineTuneLlamaExperimentSweep01.ipynb", "FineTuneLlamaExperimentSweep02.ipynb"]
    alone = "experiment_run_2026_11_learning_rate_sweep_name_v1.ipynb"
    for twin in twins:
        (server.root_dir / twin).parent.mkdir(parents=True)
    for name in [*names, *twins, alone]:
        server.api(
            "api/sessions",
            "POST",
            {"path": name, "type": "notebook", "name": name, "kernel": {"name": "python3"}},
        )
    console = server.api(
        "api/sessions",
        "POST",
        {"path": "console-1-5c1d2e3f", "type": "console", "name": "Console 1",
         "kernel": {"name": "python3"}},
    )  # fmt: skip
    console_row = panel.locator(f'.q3j-kernel[data-kernel-id="{console["kernel"]["id"]}"]')
    console_row.wait_for(timeout=60_000)
    for name in [*names, *twins, alone]:
        row(page, name).wait_for(timeout=60_000)
    screenshot(page, output_dir / "sidebar-long-names.png")

    ends = [row(page, name).locator(".q3j-name-end") for name in [*names, alone]]
    shown = [(end.inner_text(), end.evaluate(WHOLE)) for end in ends]
    expected = [("Sweep01.ipynb", True), ("Sweep02.ipynb", True), ("name_v1.ipynb", True)]
    assert shown == expected, shown
    folders = [row(page, name).locator(".q3j-kernel-folder") for name in twins]
    assert [f.evaluate(FOLDER_END_SHOWS) for f in folders] == [{"cut": True, "endShows": True}] * 2
    assert [f.inner_text() for f in folders] == [twin.rsplit("/", 1)[0] for twin in twins]

    scrolls = panel.evaluate(
        "n => [n.scrollHeight > n.clientHeight, n.offsetWidth > n.clientWidth]"
    )
    assert scrolls == [True, True], "six rows should scroll the panel, its scrollbar shown"
    buttons = [b for r in panel.locator(".q3j-kernel").all() for b in r.evaluate(BUTTONS_FIT)]
    assert len(buttons) == 12 and all(b["oneLine"] and b["inRow"] for b in buttons), buttons

    name = console_row.locator(".q3j-kernel-name")
    assert name.inner_text() == "Console 1"
    assert console_row.locator(".q3j-link").count() == 0
    name.click()
    time.sleep(1.0)
    assert page.locator(".jp-Dialog").count() == 0
    assert errors == []


NO_KERNELS_AUTHORIZER = """\
from jupyter_server.auth import Authorizer


class NoKernels(Authorizer):  # a signed-in user may do anything but use kernels
    def is_authorized(self, handler, user, action, resource):
        return resource != "kernels"


c.ServerApp.authorizer_class = NoKernels
"""


def test_a_user_without_permission_is_told_so_not_to_sign_in(
    lab_server_factory: Callable[..., LabServer],
    browser_page: Any,
    output_dir: Path,
    tmp_path: Path,
) -> None:
    """Signed in, but the server's authorizer denies reading kernels: the panel shows the
    server's reason and says the account lacks the permission (it said "not signed in" and to
    open the URL with its token, which changes nothing)."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.py").write_text(NO_KERNELS_AUTHORIZER)
    server = lab_server_factory({"JUPYTER_CONFIG_PATH": str(config)})
    page = browser_page
    page.goto(server.url("lab"), wait_until="domcontentloaded")
    panel = open_sidebar(page)
    empty = panel.locator(".q3j-empty")
    empty.get_by_text("User is not authorized to read on resource: kernels.").wait_for(
        timeout=30_000
    )
    text = empty.inner_text()
    assert "lacks the permission" in text and "not signed in" not in text, text
    assert "token" not in text, text
    screenshot(page, output_dir / "sidebar-no-permission.png")


def test_sidebar_explains_a_missing_extension_and_a_lost_server(
    lab_server_factory: Callable[..., LabServer],
    browser_page: Any,
    output_dir: Path,
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"qwen3_jupyter": False}}})
    )
    server = lab_server_factory({"JUPYTER_CONFIG_PATH": str(config)})
    page = browser_page
    page.goto(server.url("lab"), wait_until="domcontentloaded")
    panel = open_sidebar(page)
    missing = panel.locator(".q3j-empty")
    missing.get_by_text("server extension is not running").wait_for(timeout=30_000)
    assert "jupyter server extension enable qwen3_jupyter" in missing.inner_text()
    screenshot(page, output_dir / "sidebar-extension-missing.png")

    server.process.terminate()
    server.process.wait(20)
    panel.get_by_text("The Jupyter server is not reachable.").wait_for(timeout=60_000)
    assert "retrying" in panel.inner_text()
    screenshot(page, output_dir / "sidebar-server-unreachable.png")
