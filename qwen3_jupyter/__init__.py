"""qwen3_jupyter: Qwen3 inside the Jupyter kernel, with memory that stays where you left it.

`%load_ext qwen3_jupyter` registers the magics. Importing the package is cheap: torch and
transformers are imported only when a model is first used, and the Jupyter server extension
never imports them.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Modules with a `load(ip)` that registers one feature on the shell and its undo in
# `lifecycle`; loaded in this order, unloaded in reverse.
_COMPONENTS: tuple[str, ...] = (
    "magics",
    "gauge_magics",
    "kernel_comm",
    "clean_magics",
    "completion",
)

# `cleanup()`, `inference()` and `gauge()` share their names with the submodules that define
# them. Binding the functions here, after those submodules are imported, means a later
# `import qwen3_jupyter.cleanup` cannot shadow the function with the module. They import
# neither torch nor transformers (~0.1 s together).
from .cleanup import CleanupReport, add_cleanup_listener, cleanup  # noqa: E402
from .gauge import gauge  # noqa: E402
from .inference import inference  # noqa: E402

# The rest of the public API, imported on first access.
_LAZY: dict[str, str] = {
    "Result": "generation",
    "GenerationOptions": "generation",
    "split_thinking": "generation",
    "generate_batch": "batching",
    "BatchResults": "batching",
    "stop": "model_use",
    "ModelBusy": "model_use",
    "ModelError": "models",
    "EngineError": "engines.base",
    "ResultsFileError": "batching",
    "unload": "unloading",
    "UnloadReport": "session",
    "reset_chat": "session",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors (py.typed)
    from .batching import BatchResults, ResultsFileError, generate_batch
    from .engines.base import EngineError
    from .generation import GenerationOptions, Result, split_thinking
    from .model_use import ModelBusy, stop
    from .models import ModelError
    from .session import UnloadReport, reset_chat
    from .unloading import unload


__all__ = [
    "BatchResults",
    "CleanupReport",
    "EngineError",
    "GenerationOptions",
    "ModelBusy",
    "ModelError",
    "Result",
    "ResultsFileError",
    "UnloadReport",
    "add_cleanup_listener",
    "cleanup",
    "gauge",
    "generate_batch",
    "inference",
    "reset_chat",
    "split_thinking",
    "stop",
    "unload",
]


def load_ipython_extension(ip: Any) -> None:
    """Load every component; each registers its own undo, so unloading mirrors this exactly."""
    from . import lifecycle

    if getattr(ip, "_qwen3_jupyter_loaded", False):
        return
    try:
        for name in _COMPONENTS:
            importlib.import_module(f"{__name__}.{name}").load(ip)
    except BaseException:  # Ctrl-C or a failure midway: IPython does not count it loaded, so
        lifecycle.run_unload()  # `%unload_ext` could not undo the half, and a reload doubled it
        _say_what_unloading_turned_off()  # (it closes gauges `gauge()` opened, say)
        raise
    ip._qwen3_jupyter_loaded = True
    lifecycle.on_unload("loaded-flag", lambda: setattr(ip, "_qwen3_jupyter_loaded", False))


def unload_ipython_extension(ip: Any) -> None:
    """The exact mirror of loading: every magic, hook, thread and comm target goes away."""
    from . import lifecycle

    lifecycle.run_unload()
    _say_what_unloading_turned_off()


def _say_what_unloading_turned_off() -> None:
    """One line for what the undos turned off that the user had turned on (`lifecycle.tell`),
    taken so that none is said again by a later unload."""
    from . import lifecycle

    told = lifecycle.take_told()
    if told:
        models = sys.modules.get(f"{__name__}.models")  # never imported here just to ask
        held = models is not None and models.HOLDER.loaded is not None
        stays = "; a loaded model stays" if held else ""  # (said with no model loaded at all)
        print(f"[qwen3] extension unloaded: {'; '.join(told)}{stays}", flush=True)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazily imported names too: tab completion and `help(qwen3_jupyter)` list them."""
    return sorted({*globals(), *_LAZY})


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "qwen3-jupyter"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "qwen3_jupyter.server"}]
