"""Real allocation failures on the CPU, for the out-of-memory tests that cannot use a GPU.

torch's CPU allocator fails for real when asked for more than any address space holds (2**58
bytes is past even 57-bit virtual addresses), whatever the machine's overcommit setting: so these
helpers make the genuine error ("DefaultCPUAllocator: can't allocate memory") without replacing
anything in torch or in the package.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Any

BEYOND_ANY_HOST = 2**58
"""Bytes no host can map; the message names it as 262144.0 TiB."""


def hog_above(model: Any, rows_allowed: int) -> Any:
    """Make every forward of `model` with more than `rows_allowed` rows ask the allocator for
    more than any host has — what a batch too large for the host's memory does, at a batch size
    the test picks. Returns the hook's handle (`.remove()` ends it)."""
    import torch

    def hog(module: Any, args: tuple[Any, ...]) -> None:
        if args[0].shape[0] > rows_allowed:
            torch.empty(BEYOND_ANY_HOST, dtype=torch.uint8)

    return model.model.embed_tokens.register_forward_pre_hook(hog)


HOG_HOOK = f"from typing import Any\nBEYOND_ANY_HOST = {BEYOND_ANY_HOST}\n" + inspect.getsource(
    hog_above
)
"""The same function, as kernel-side code: `hook = hog_above(model, 0)` after it."""


def checkpoint_too_large_for_any_host(tiny: Path, folder: Path) -> Path:
    """A copy of the tiny checkpoint whose MLP weights are missing from the file and declared
    at a size no host can allocate: loading it fails in the allocator, as a checkpoint too
    large for the machine does."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny, folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    bytes_per_value = 4 if config.get("dtype", config.get("torch_dtype")) == "float32" else 2
    config["intermediate_size"] = BEYOND_ANY_HOST // (config["hidden_size"] * bytes_per_value)
    config_path.write_text(json.dumps(config))
    weights = load_file(str(folder / "model.safetensors"))
    kept = {name: tensor for name, tensor in weights.items() if ".mlp." not in name}
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
