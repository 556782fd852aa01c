"""The Jupyter server extension: GPU and host memory per kernel at `/qwen3-jupyter/metrics`.

Enabled on install by `jupyter-config/server-config/qwen3_jupyter.json`. It imports neither
torch nor the magics; NVML is read only on the sampler thread (see `sampler`). Settings, e.g. in
`jupyter_server_config.py`: `c.Qwen3JupyterMetrics.sample_interval = 0.5`.
"""

from __future__ import annotations

import atexit
from typing import Any

from traitlets import Float, Int
from traitlets.config import Configurable

from .handlers import handlers, metrics_url
from .sampler import Sampler

SAMPLER_SETTING = "qwen3_jupyter_sampler"
"""Key of the running `Sampler` in the Tornado application settings (tests and benchmarks)."""


class Qwen3JupyterMetrics(Configurable):
    """Configuration of the metrics endpoint's sampler."""

    sample_interval = Float(
        1.0, help="Seconds between two NVML readings (shared by every client).", config=True
    )
    history_length = Int(120, help="Readings kept for the sidebar's sparklines.", config=True)
    idle_timeout = Float(
        60.0,
        help="Seconds without a request after which the sampler stops polling and closes NVML "
        "(longer for a client that polls less often: three of its intervals, up to 30 min; "
        "at least three sample intervals).",
        config=True,
    )


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "qwen3_jupyter.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    config = Qwen3JupyterMetrics(parent=serverapp)
    sampler = Sampler(
        interval=config.sample_interval,
        history_length=config.history_length,
        idle_timeout=config.idle_timeout,
    )
    web_app = serverapp.web_app
    web_app.settings[SAMPLER_SETTING] = sampler
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"], sampler))
    atexit.register(sampler.stop, 1.0)
    serverapp.log.info(
        "qwen3_jupyter: GPU memory metrics at %s", metrics_url(web_app.settings["base_url"])
    )


# jupyter_server < 2 looked for this name.
load_jupyter_server_extension = _load_jupyter_server_extension
