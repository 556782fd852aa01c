"""The live memory gauge: plain ipywidgets subscribed to the kernel's monitor.

The gauge never reads memory itself: the monitor's polling thread hands it snapshots, and it
sets widget values from that thread. ipywidgets sends a comm message only when a value really
changes, and the monitor polls once per interval, so the front end gets at most one update per
interval — even while a cell is busy — and, while memory is steady, only the footer's heartbeat
every 2 s, which lets the browser mark a gauge whose kernel is gone as stale (`footer_html`).
Figures are rounded to what is shown (three significant digits, whole percents) so noise does
not become traffic.

`qwen3_jupyter.gauge()` returns a `Gauge`; `%qwen3_gauge` displays one. Several gauges share the
one monitor; `Gauge.close()` unsubscribes.

Below the memory rows: one row per server this kernel asks (`%qwen3 --server`), its bar the
server's KV-cache usage when it publishes Prometheus metrics, saying plainly that the model's
memory lives there; then a line for what engines keep in memory on purpose (the fast path's
decode cache), so memory held for speed is never mistaken for a leak.
"""

from __future__ import annotations

import html
import os
import re
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .memory import GiB, MiB, TorchDeviceMemory
from .monitor import GpuSample, Monitor, Snapshot, checked_interval, get_monitor
from .nvml import cuda_visible_entries

SPARK_POINTS = 60
SPARK_BUCKET_SECONDS = 2.0
SPARK_WIDTH = 90
SPARK_HEIGHT = 18
WARN_FRACTION = 0.75
"""Amber from here (the JupyterLab sidebar's default warning threshold too)."""
DANGER_FRACTION = 0.90
HOST_KEY = "host"
SERVER_KEY = "server:"
UNREAD_KEY = "unread:"
TORCH_KEY = "torch:"
"""Rows without a total (no sparkline: a line at 0 would read as memory freed)."""

if TYPE_CHECKING:
    from .engines.server_metrics import ServerLoad

_GAUGES: weakref.WeakSet[Gauge] = weakref.WeakSet()


def short_bytes(n: int | None) -> str:
    """Three significant digits in binary units ('412 MiB', '1.23 GiB', '80.0 GiB'); the unit
    and the digits are chosen after rounding, so 1023.99 MiB reads '1.00 GiB', not '1024 MiB'."""
    if n is None:
        return "unknown"
    units = (("B", 1), ("KiB", 1024), ("MiB", MiB), ("GiB", GiB))
    step = len(units) - 1
    while step > 0 and abs(n) < units[step][1]:
        step -= 1
    if step == 0:
        return f"{n} B"
    while True:
        unit, size = units[step]
        value = n / size
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
        shown = round(value, digits)
        if abs(shown) >= 1024 and step < len(units) - 1:
            step += 1  # 1023.99 MiB rounds to 1024: say it in GiB
            continue
        if digits and abs(shown) >= (10 if digits == 2 else 100):
            digits -= 1  # 9.999 GiB rounds to 10.00: three digits are '10.0'
        return f"{value:.{digits}f} {unit}"


def device_bytes(n: int) -> str:
    """Whole-device figures to 0.1 GiB: other processes make finer digits pure noise."""
    return f"{n / GiB:.1f} GiB" if round(n / GiB, 1) >= 1 else short_bytes(n)


@dataclass(frozen=True)
class RowView:
    """What one row shows; equal views mean no message."""

    key: str
    label: str
    tooltip: str
    percent: int | None
    """None: no figure to fill the bar with (a server without /metrics, a GPU that could not
    be read, torch's figures without a total): the bar stays empty and no "0%" is written."""
    style: str
    text: str
    fraction: float


def _style(fraction: float, free: int, low_free: int) -> str:
    if fraction >= DANGER_FRACTION or free < low_free:
        return "danger"
    return "warning" if fraction >= WARN_FRACTION else "success"


def _kernel_share(sample: GpuSample) -> str:
    """This kernel's memory on the GPU, or why it is unknown (never a made-up 0)."""
    if sample.kernel_bytes is not None:
        return f"this kernel {short_bytes(sample.kernel_bytes)}"
    reasons = []
    if sample.kernel_listed:
        reasons.append("the driver lists this kernel without a figure")
    elif not sample.gpu.processes_listed:
        reasons.append("NVML will not list the processes here")
    if sample.torch is not None:
        reasons.append(f"torch reserved {short_bytes(sample.torch.reserved)}")
    elif not reasons:
        reasons.append("torch has not used this GPU")
    return f"this kernel unknown ({'; '.join(reasons)})"


def gpu_label(sample: GpuSample) -> str:
    """'GPU 2', or 'cuda:0 (GPU 2)' where torch numbers it differently from NVML
    (CUDA_VISIBLE_DEVICES), so a row can be matched to the device a notebook names."""
    gpu = sample.gpu
    if sample.cuda_index is None or (gpu.mig_parent is None and sample.cuda_index == gpu.index):
        return gpu.label
    return f"cuda:{sample.cuda_index} ({gpu.label})"


def gpu_row(sample: GpuSample, low_free: int) -> RowView:
    gpu = sample.gpu
    fraction = gpu.memory_used / gpu.memory_total if gpu.memory_total else 0.0
    parts = [
        f"{device_bytes(gpu.memory_used)} / {device_bytes(gpu.memory_total)}",
        _kernel_share(sample),
    ]
    if sample.torch is not None:
        parts.append(
            f"torch {short_bytes(sample.torch.allocated)} alloc · "
            f"{short_bytes(sample.torch.reserved)} reserved"
        )
    parts.append(f"GPU peak {short_bytes(sample.peak_used)}")
    if gpu.utilization is not None:
        parts.append(f"util {gpu.utilization}%")
    if not sample.visible:
        parts.append("not visible to this kernel")
    source = "" if gpu.memory_source == "v2" else " · NVML v1 memory (counts driver reserve)"
    return RowView(
        key=gpu.uuid,
        label=gpu_label(sample),
        tooltip=f"{gpu.name} · {gpu.uuid} · NVML {gpu.label}{source}",
        percent=round(100 * fraction),
        style=_style(fraction, gpu.memory_free, low_free),
        text=" · ".join(parts),
        fraction=fraction,
    )


def host_row(snapshot: Snapshot, low_free: int) -> RowView:
    host = snapshot.host
    fraction = host.used / host.total if host.total else 0.0
    text = (
        f"{device_bytes(host.used)} / {device_bytes(host.total)} · "
        f"this kernel {short_bytes(host.process_rss)} RSS (peak "
        f"{short_bytes(snapshot.host_peak_rss)})"
    )
    return RowView(
        key=HOST_KEY,
        label="container" if host.source == "cgroup" else "host",
        tooltip=(
            "container memory (cgroup limit): used / limit, and this kernel's resident memory"
            if host.source == "cgroup"
            else "host RAM: used / total, and this kernel's resident memory"
        ),
        percent=round(100 * fraction),
        style=_style(fraction, host.available, low_free),
        text=text,
        fraction=fraction,
    )


def server_row(load: ServerLoad) -> RowView:
    """A server's row: its KV-cache usage as the bar (0 when it publishes none), its running
    and waiting requests, and that the model's memory is the server's, not this kernel's."""
    known = load.kv_cache_usage is not None
    fraction = load.kv_cache_usage if load.kv_cache_usage is not None else 0.0
    return RowView(
        key=f"{SERVER_KEY}{load.url}",
        label="server",
        tooltip=(
            f"{load.url}: the model runs there; its GPU memory is the server's "
            "(bar: KV-cache usage from the server's /metrics)"
        ),
        percent=round(100 * fraction) if known else None,
        style=_style(fraction, 1, 0),
        text=f"{load.url} · {load.describe()}",
        fraction=fraction,
    )


def torch_row(device: TorchDeviceMemory) -> RowView:
    """A CUDA device torch uses where NVML is missing (a container given `compute` but not
    `utility`): this kernel's figures from torch's allocator, the GPU's total unknown. The
    footer promised "host and torch memory", and only host memory was shown."""
    return RowView(
        key=f"{TORCH_KEY}{device.index}",
        label=f"cuda:{device.index}",
        tooltip=f"{device.name}: torch's own figures (without NVML the GPU's total is unknown)",
        percent=None,
        style="success",
        text=(
            f"this kernel: torch {short_bytes(device.reserved)} reserved, "
            f"{short_bytes(device.allocated)} allocated (peak "
            f"{short_bytes(device.peak_reserved)}) · total unknown without NVML"
        ),
        fraction=0.0,
    )


def unread_row(index: int, reason: str | None) -> RowView:
    """A GPU NVML counted but could not read (lost, reset): kept on screen, saying so, rather
    than a row that silently disappears."""
    return RowView(
        key=f"{UNREAD_KEY}{index}",
        label=f"GPU {index}",
        tooltip=reason or "NVML could not read this GPU",
        percent=None,
        style="danger",
        text="could not be read (" + _unread_reason(index, reason) + ")",
        fraction=0.0,
    )


def _unread_reason(index: int, reason: str | None) -> str:
    """This GPU's part of the poll's NVML error ('GPU is lost'), else the whole error."""
    for part in (reason or "").removeprefix("NVML error: ").split("; "):
        if part.startswith(f"GPU {index}: "):
            return "NVML: " + part.split(": ", 1)[1]
    return reason or "NVML error"


def _unread_shown(snapshot: Snapshot, show_all: bool) -> list[int]:
    """Unread GPUs this kernel may be using: all of them unless CUDA_VISIBLE_DEVICES names
    others by index (an unread GPU has no UUID to match)."""
    unread = sorted(snapshot.unread_gpus or ())
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if show_all or value is None:
        return unread
    entries = cuda_visible_entries(value)
    if not all(e.isdigit() for e in entries):
        return unread
    return [i for i in unread if i in {int(e) for e in entries}]


def row_views(snapshot: Snapshot, show_all: bool, low_free: int) -> list[RowView]:
    """One row per GPU this kernel sees (every GPU with `show_all`), in torch's order, and one
    per GPU that could not be read; then host memory, then one per server this kernel asks."""
    gpus = snapshot.gpus if show_all else snapshot.visible_gpus
    without_nvml = () if snapshot.nvml_available else snapshot.torch
    return [
        *(gpu_row(g, low_free) for g in gpus),
        *(torch_row(device) for device in without_nvml),
        *(unread_row(i, snapshot.nvml_reason) for i in _unread_shown(snapshot, show_all)),
        host_row(snapshot, low_free),
        *(server_row(load) for load in snapshot.servers),
    ]


def kept_html(snapshot: Snapshot) -> str:
    """The 'kept on purpose' line ('' when nothing is kept)."""
    if not snapshot.kept:
        return ""
    text = "; ".join(snapshot.kept)
    return f'<div style="color:{MUTED}">kept on purpose: {html.escape(text)}</div>'


def footer_text(snapshot: Snapshot) -> str:
    if snapshot.error:
        return snapshot.error
    if not snapshot.nvml_available:
        return snapshot.nvml_reason or "NVML unavailable; showing host and torch memory only"
    parts = [f"NVML · driver {snapshot.driver_version or 'unknown'}"]
    if not snapshot.gpus and (snapshot.unread_gpus is None or snapshot.unread_gpus):
        parts.append("could not read the GPUs: showing host memory")
    elif not snapshot.gpus:
        parts.append("no NVIDIA GPU found: showing host memory")
    elif not snapshot.visible_gpus:
        parts.append("no GPU visible to this kernel (CUDA_VISIBLE_DEVICES): showing host memory")
    if snapshot.nvml_reason:
        parts.append(snapshot.nvml_reason)
    parts.append(f"every {snapshot.interval:g} s")
    return " · ".join(parts)


def gpus_in_question(snapshot: Snapshot) -> bool:
    """Whether the footer says why GPU rows are missing or unread. A compact gauge and a
    gauge's static copy drop the footer, but not this: host memory alone reads as "no GPU
    memory used", not as "no GPU could be read"."""
    return bool(
        snapshot.error
        or not snapshot.nvml_available
        or snapshot.nvml_reason
        or not snapshot.visible_gpus
    )


HEARTBEAT_SECONDS = 2.0
"""How often a steady gauge still sends its footer: a front end that stops hearing it (a stopped
or restarted kernel) marks the reading stale after `STALE_BEATS` beats."""
STALE_BEATS = 3
FIRST_READING_WAIT = 0.5
"""Seconds a new gauge waits for its first reading, so it is never displayed (or saved) empty;
NVML that hangs longer leaves 'reading memory…' until the thread's reading arrives."""
MUTED = "var(--jp-ui-font-color2, #555)"
WARN_COLOR = "var(--jp-warn-color0, #b45309)"
"""JupyterLab's theme colours (readable in its dark theme too), with light-theme fallbacks."""
WARNING_STYLE = (
    f"color:var(--jp-ui-font-color1, #222);border-left:3px solid {WARN_COLOR};padding-left:4px"
)
"""A warning's text in the theme's text colour, marked by an amber bar: amber text on white
was 3.8:1, under the 4.5:1 text needs (the bar, a graphic, needs 3:1)."""
DIMMED = ".65"
"""A stale gauge's readings: dimmed, still readable (at .4 they were 2.4:1 on white)."""
LEVEL_WORDS = {"warning": "high", "danger": "nearly full"}
"""A row's level in words beside its bar's colour, which alone told it."""
READINGS_CLASS = "qwen3-gauge-readings"
"""The parts of a gauge that dim when its readings go stale (rows, kept line, warnings)."""


def footer_html(snapshot: Snapshot, compact: bool = False, scope: str = "qwen3-gauge") -> str:
    """The footer line, and what makes a gauge whose kernel is gone say so by itself.

    ipywidgets only sends what changed, so a steady gauge and a dead one look the same. The
    footer changes at least every heartbeat (`data-beat`), and it carries CSS animations whose
    delay outlasts a few beats: one on its own warning (rebuilt with the footer, so restarted by
    each beat), one on the readings of the gauge `scope` names (persistent elements, restarted
    because each beat switches between two animation names). When the kernel stops sending —
    shut down, restarted, its thread hung — they run out: the readings dim and the warning says
    when the last one was taken. A saved notebook does the same when it is opened again.

    What CSS alone cannot do: a gauge the browser stops drawing (a notebook tab in the
    background, a cell scrolled out of a windowed notebook) restarts its animations when it is
    shown again, so a dead kernel's gauge looks live for those few beats once more.

    The warning is `visibility:hidden` until then, not only transparent: a screen reader read
    "not updated since …" out on every live gauge."""
    period = max(HEARTBEAT_SECONDS, snapshot.interval)
    beat = int(snapshot.timestamp // period)
    delay = f"{STALE_BEATS * period + 1:g}s"
    read_at = beat * period if snapshot.interval < HEARTBEAT_SECONDS else snapshot.timestamp
    since = time.strftime("%H:%M:%S %Z", time.localtime(read_at)).strip()
    live = "" if compact and not gpus_in_question(snapshot) else html.escape(footer_text(snapshot))
    css = (
        "<style>@keyframes qwen3-gauge-stale{to{max-height:6em;opacity:1;visibility:visible}}"
        f"@keyframes qwen3-gauge-dim-0{{to{{opacity:{DIMMED}}}}}"
        f"@keyframes qwen3-gauge-dim-1{{to{{opacity:{DIMMED}}}}}"
        f".{scope} .{READINGS_CLASS}{{animation:qwen3-gauge-dim-{beat % 2} 0s {delay} forwards}}"
        "</style>"
    )
    return (
        f'{css}<small class="qwen3-gauge-footer" data-beat="{beat}">'
        f'<span class="qwen3-gauge-live" style="animation:qwen3-gauge-dim-0 0s {delay} '
        f'forwards">{live}</span><span class="qwen3-gauge-stale" style="display:block;'
        f"max-height:0;overflow:hidden;opacity:0;visibility:hidden;{WARNING_STYLE};"
        f'animation:qwen3-gauge-stale 0s {delay} forwards">⚠ not updated since {since}: a saved '
        "copy, or the kernel stopped, restarted or is in a call that holds Python's lock (a long "
        "sort, pickling); if it stays so while the kernel is idle, run %qwen3_gauge "
        "again</span></small>"
    )


def sparkline_svg(values: list[float]) -> str:
    """An inline SVG polyline of fractions in [0, 1], oldest first, padded to a fixed width.

    Padding with the oldest value keeps a steady series drawing the same picture, and heights
    are rounded to half a pixel, so a steady gauge sends nothing.
    """
    if not values:
        return ""
    padded = [values[0]] * (SPARK_POINTS - len(values)) + values[-SPARK_POINTS:]
    step = SPARK_WIDTH / (SPARK_POINTS - 1)
    top = SPARK_HEIGHT - 1
    points = " ".join(
        f"{i * step:.1f},{round(2 * top * (1 - min(1.0, max(0.0, v)))) / 2 + 0.5:g}"
        for i, v in enumerate(padded)
    )
    return (
        f'<svg width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" '
        'style="vertical-align:middle"><polyline fill="none" '
        'style="stroke:var(--jp-brand-color1, #4c78a8)" '
        f'stroke-width="1.2" points="{points}"/></svg>'
    )


class _Series:
    """The last two minutes of one row in 2-second buckets (each bucket keeps its maximum)."""

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=SPARK_POINTS)
        self.bucket: int | None = None

    def add(self, timestamp: float, value: float) -> None:
        bucket = int(timestamp // SPARK_BUCKET_SECONDS)
        if bucket == self.bucket and self.values:
            self.values[-1] = max(self.values[-1], value)
            return
        if self.bucket is not None and self.values and bucket > self.bucket + 1:
            # Polls further apart than a bucket (--interval 5): the last value holds until
            # this one, so 60 points stay two minutes (one point per poll drew five).
            skipped = min(bucket - self.bucket - 1, SPARK_POINTS)
            self.values.extend([self.values[-1]] * skipped)
        self.values.append(value)
        self.bucket = bucket


def row_text(view: RowView) -> str:
    """A row's words: its percentage and level first (`LEVEL_WORDS`), then its figures."""
    if view.percent is None:
        return view.text
    level = LEVEL_WORDS.get(view.style)
    return f"{view.percent}%{f' ({level})' if level else ''} · {view.text}"


def unbroken(text: str) -> str:
    """Row text that wraps only between its ' · ' parts: inside one ('peak 20.0 GiB') the
    spaces are non-breaking, so a narrow notebook never leaves a number away from its unit."""
    return " · ".join(part.replace(" ", "\u00a0") for part in text.split(" · "))


def _parts(widget: widgets.Widget) -> list[widgets.Widget]:
    """The widgets a widget made for itself: its Layout and its Style (ipywidgets gives every
    DOM widget its own, and `close()` leaves them open)."""
    found = [getattr(widget, name, None) for name in ("layout", "style")]
    return [part for part in found if isinstance(part, widgets.Widget)]


def close_widget(widget: widgets.Widget) -> None:
    """Close a widget and the Layout and Style it made: each of those has its own comm and a
    place in `Widget.widgets`, so a closed gauge left 17 of them behind, every time."""
    for part in _parts(widget):
        part.close()
    widget.close()


class _Row:
    def __init__(self, compact: bool) -> None:
        fixed = {"flex": "0 0 auto"}  # columns keep their width, so rows line up
        self.label = widgets.HTML(layout=widgets.Layout(width="130px", **fixed))
        self.bar = widgets.FloatProgress(
            value=0.0, min=0.0, max=100.0, layout=widgets.Layout(width="160px", **fixed)
        )
        self.spark = widgets.HTML(
            layout=widgets.Layout(display="none" if compact else None, width="100px", **fixed)
        )
        self.text = widgets.HTML()
        # wraps where the columns do not fit (200% zoom pushed the figures out of sight)
        self.box = widgets.HBox(
            [self.label, self.bar, self.spark, self.text],
            layout=widgets.Layout(flex_flow="row wrap"),
        )
        self.box.add_class("qwen3-gauge-row")
        self.text.add_class("qwen3-gauge-text")

    def show(self, view: RowView, spark: str) -> None:
        self.label.value = (
            f'<b style="white-space:nowrap" title="{html.escape(view.tooltip, quote=True)}">'
            f"{html.escape(view.label)}</b>"
        )
        with self.bar.hold_sync():
            self.bar.value = float(view.percent or 0)
            self.bar.bar_style = view.style
        self.spark.value = spark
        self.text.value = f"<span>{html.escape(unbroken(row_text(view)))}</span>"

    def close(self) -> None:
        for w in (self.label, self.bar, self.spark, self.text, self.box):
            close_widget(w)


class Gauge(widgets.VBox):
    """A live view of the monitor: one row per visible GPU, then host memory, then warnings."""

    def __init__(
        self, monitor: Monitor | None = None, show_all: bool = False, compact: bool = False
    ) -> None:
        self._monitor = monitor if monitor is not None else get_monitor()
        self._show_all = show_all
        self._compact = compact
        self._lock = threading.Lock()
        self._rows: dict[str, _Row] = {}
        self._series: dict[str, _Series] = {}
        self._rows_box = widgets.VBox()
        self._kept = widgets.HTML()
        self._warnings = widgets.HTML()
        for part in (self._rows_box, self._kept, self._warnings):
            part.add_class(READINGS_CLASS)
        # Its own CSS class, unique across kernels (the footer's <style> applies to the whole
        # page): one gauge's stale readings dim that gauge only.
        self._scope = f"qwen3-gauge-{uuid.uuid4().hex[:12]}"
        self._last_reading: float | None = None
        self._notice = ""  # why GPU rows are missing, for the static copy
        self._footer = widgets.HTML("" if compact else "<small>reading memory…</small>")
        self._first_reading = threading.Event()
        self._closed = False
        self.updates = 0
        super().__init__([self._rows_box, self._kept, self._warnings, self._footer])
        self.add_class("qwen3-gauge")
        self.add_class(self._scope)
        if self._monitor.running:  # a stopped monitor's readings are old: it starts afresh
            for old in self._monitor.history():
                self._record(old)
            latest = self._monitor.latest()
            if latest is not None:
                self._render(latest)
        self._unsubscribe = self._monitor.subscribe(self._on_snapshot)
        _GAUGES.add(self)
        self._first_reading.wait(FIRST_READING_WAIT)

    @property
    def monitor(self) -> Monitor:
        return self._monitor

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self._record(snapshot)
        self._render(snapshot)

    def _record(self, snapshot: Snapshot) -> None:
        for view in row_views(snapshot, True, self._monitor.low_free_bytes):
            if view.key.startswith((UNREAD_KEY, TORCH_KEY)):
                continue  # no reading: a sparkline at 0 would read as memory freed
            self._series.setdefault(view.key, _Series()).add(snapshot.timestamp, view.fraction)

    def _render(self, snapshot: Snapshot) -> None:
        with self._lock:
            if self._closed:
                return
            views = row_views(snapshot, self._show_all, self._monitor.low_free_bytes)
            keys = [v.key for v in views]
            if keys != list(self._rows):
                for key in set(self._rows) - set(keys):
                    self._rows.pop(key).close()
                rows = {k: self._rows.get(k) or _Row(self._compact) for k in keys}
                self._rows = rows
                self._rows_box.children = tuple(r.box for r in rows.values())
            for view in views:
                series = self._series.get(view.key)
                spark = (
                    "" if self._compact or series is None else sparkline_svg(list(series.values))
                )
                self._rows[view.key].show(view, spark)
            self._kept.value = kept_html(snapshot)
            self._warnings.value = "".join(
                f'<div style="{WARNING_STYLE}">⚠ {html.escape(w)}</div>' for w in snapshot.warnings
            )
            self._footer.value = footer_html(snapshot, self._compact, self._scope)
            self._notice = footer_text(snapshot) if gpus_in_question(snapshot) else ""
            self._last_reading = snapshot.timestamp
            self.updates += 1
        self._first_reading.set()

    def as_html(self) -> str:
        """The rows and warnings as they are now, as static HTML (no widgets), saying when
        they were read: scrolled back to later, a copy must not pass for a live reading."""
        with self._lock:
            rows = [f"<div>{r.label.value} · {r.text.value}</div>" for r in self._rows.values()]
            when = ""
            if self._last_reading is not None:
                at = time.strftime("%H:%M:%S", time.localtime(self._last_reading))
                notice = f"{html.escape(self._notice)} · " if self._notice else ""
                when = (
                    f'<div style="color:{MUTED}"><small>{notice}memory as read at {at}</small>'
                    "</div>"
                )
            return (
                f'<div class="qwen3-gauge-static">{"".join(rows)}{self._kept.value}'
                f"{self._warnings.value}{when}</div>"
            )

    def as_text(self) -> str:
        """`as_html` as plain text: what a saved notebook shows where the widget cannot be
        drawn (an untrusted notebook, one saved without widget state: JupyterLab's default)
        and what exporters without HTML print; it was the widget's repr, 2 KB of `VBox(...)`."""
        lines = [line for line in _PLAIN_BREAKS.split(self.as_html()) if line]
        text = "\n".join(html.unescape(_TAG.sub("", line)).strip() for line in lines)
        return "\n".join(line for line in text.splitlines() if line)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget's view, with `as_text` as its plain-text form; a closed gauge's last
        reading as text (it was the 2.4 KB repr `as_text` replaces: closing a widget hides
        this method behind an instance attribute of None, which `close` takes away again)."""
        if self._closed:
            return {
                "text/plain": f"[qwen3] memory gauge (closed; its last reading)\n{self.as_text()}"
            }
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            title = "[qwen3] memory gauge (live as a widget; as text, its reading when shown)"
            bundle["text/plain"] = f"{title}\n{self.as_text()}"
        return bundle

    def close(self) -> None:
        """Stop receiving snapshots and close every child widget; the last gauge to close stops
        the polling thread (the next gauge starts it again)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._unsubscribe()
        _GAUGES.discard(self)
        for row in self._rows.values():
            row.close()
        for w in (self._rows_box, self._kept, self._warnings, self._footer):
            close_widget(w)
        for part in _parts(self):
            part.close()
        super().close()
        self.__dict__.pop("_repr_mimebundle_", None)  # ipywidgets' None: the class's again


_TAG = re.compile(r"<style>.*?</style>|<[^>]+>", re.S)
_PLAIN_BREAKS = re.compile(r"</div>|<br\s*/?>")
"""Where `as_html`'s lines end: each row and note is a <div> of its own."""


@contextmanager
def inline_gauge(compact: bool = True) -> Iterator[Gauge]:
    """Show a live gauge for the duration of a block (one `%qwen3` call, one cleanup).

    On exit the widget is replaced by a static copy of its last reading and closed, so a
    notebook full of calls keeps no live widgets and the polling thread no extra subscribers.
    """
    from IPython.display import display

    live = Gauge(get_monitor(), compact=compact)  # not `gauge()`: the cell's own one stays
    handle = display(live, display_id=True)
    try:
        yield live
    finally:
        last = {"text/html": live.as_html(), "text/plain": live.as_text()}
        live.close()
        if handle is not None:  # a plain form too: `<IPython.core.display.HTML object>` was it
            handle.update(last, raw=True)


def gauge(interval: float | None = None, show_all: bool = False, compact: bool = False) -> Gauge:
    """A live memory gauge for this kernel (display it, or let it be a cell's last value).

    `interval` sets the shared monitor's polling interval in seconds (default 0.5; one that no
    poll can wait, such as 0, -1 or inf, is a one-line error before anything starts);
    `show_all` also shows GPUs this kernel cannot use; `compact` drops the sparklines and the
    footer (all but its stale-reading warning, and why GPU rows are missing or unread).
    """
    from .gauge_magics import feed_monitor

    seconds = None if interval is None else checked_interval(interval)
    feed_monitor()
    monitor = get_monitor()
    if seconds is not None:
        monitor.interval = seconds
    shown = Gauge(monitor, show_all=show_all, compact=compact)
    _replace_in_cell(shown)
    return shown


_BY_CELL: dict[str, tuple[str, list[weakref.ref[Gauge]]]] = {}
"""The gauges each notebook cell showed in its last run (by JupyterLab's cell id), with that
run's request id."""


def _replace_in_cell(shown: Gauge) -> None:
    """Close the gauges this cell showed in an earlier run: running the cell again replaces its
    output in the browser, but the old widgets stayed live (four runs: four gauges polled and
    sent updates, 108 widget models). Gauges of the same run stay (two in one layout, or a
    full and a compact one). Closed after the new one subscribed, so the polling thread and
    its history go on."""
    run = _cell_run()
    if run is None:
        return
    cell, request = run
    _watch_cell_ends()
    shown_by, earlier = _BY_CELL.get(cell, ("", []))
    if shown_by == request:
        earlier.append(weakref.ref(shown))
        return
    _BY_CELL[cell] = (request, [weakref.ref(shown)])
    for ref in earlier:
        before = ref()
        if before is not None and before is not shown:
            before.close()


def _cell_ended(result: Any = None) -> None:
    """At a cell's end, close the gauges its earlier run showed when this run showed none:
    the browser replaced that output (the cell edited into `print(...)`, or failing before
    its gauge), and they went on polling and sending updates to nobody, until `--stop`."""
    run = _cell_run()
    if run is None:
        return
    cell, request = run
    shown_by, earlier = _BY_CELL.get(cell, (request, []))
    if shown_by == request:
        return  # this run's own gauges (the earlier ones were closed as they came)
    del _BY_CELL[cell]
    for ref in earlier:
        before = ref()
        if before is not None:
            before.close()


def _watch_cell_ends() -> None:
    """Run `_cell_ended` after every cell, from the first gauge a cell shows until unload."""
    from IPython import get_ipython

    from . import lifecycle

    shell = get_ipython()
    callbacks = shell.events.callbacks["post_run_cell"]
    if _cell_ended in callbacks:
        return
    shell.events.register("post_run_cell", _cell_ended)

    def unwatch() -> None:
        if _cell_ended in shell.events.callbacks["post_run_cell"]:
            shell.events.unregister("post_run_cell", _cell_ended)
        _BY_CELL.clear()

    lifecycle.on_unload("gauge-cell-ends", unwatch)


def _cell_run() -> tuple[str, str] | None:
    """The running cell's id, as JupyterLab and Notebook 7 send it, and its execute request's
    id (one per run); None elsewhere."""
    from .display import running_request

    parent = running_request() or {}
    cell = (parent.get("metadata") or {}).get("cellId")
    request = (parent.get("header") or {}).get("msg_id")
    if not (isinstance(cell, str) and cell and isinstance(request, str)):
        return None
    return cell, request


def open_gauges() -> list[Gauge]:
    return list(_GAUGES)


def close_all() -> int:
    """Close every open gauge; returns how many were closed."""
    gauges = open_gauges()
    for g in gauges:
        g.close()
    return len(gauges)
