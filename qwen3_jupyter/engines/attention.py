"""Attention backends for the model's own forward: flash, memory-efficient or math, not cuDNN.

Why: on Hopper and Blackwell GPUs with a recent cuDNN, torch tries cuDNN attention first, and
cuDNN builds an execution plan for every new attention shape — batch, query length and key
length — then caches it for the life of the thread. Generation meets a new shape at every
token (eager decoding's key length grows by one per step) and at every new prompt length
(prefill), so plans are built all the time and the cache only grows. On an H100 (torch 2.11,
cu130) the first 128-token `--eager` answer in a kernel took 13.0 s against 5.0 s for the same
call repeated, and the fast path's first call of a new prompt length 0.46 s against 0.38 s: about
60 ms per new shape, which plans would explain (inferred; `bench attention` measures it). Flash
and memory-efficient attention need no plans, and on CUDA they are what
torch picks when cuDNN is left out. Only this package's own generation runs inside the context;
the user's code keeps torch's choice. `QWEN3_JUPYTER_CUDNN_ATTENTION=1` keeps it for ours too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..env_switches import switch

CUDNN_ATTENTION_ENV = "QWEN3_JUPYTER_CUDNN_ATTENTION"


def cudnn_attention_allowed() -> bool:
    """True when the user asked to keep torch's own choice (cuDNN attention included)."""
    return switch(CUDNN_ATTENTION_ENV, default=False)


@contextmanager
def planless_attention() -> Iterator[None]:
    """Run the block with cuDNN attention switched off and the other backends as they were;
    torch's previous flags come back on exit. (The flags are process-wide, not per thread:
    they only name which CUDA kernels scaled_dot_product_attention may pick.)"""
    if cudnn_attention_allowed():
        yield
        return
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.backends.cuda.cudnn_sdp_enabled():
        yield
        return
    enabled = {
        SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
        SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
        SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled(),
    }
    others = [backend for backend, on in enabled.items() if on]
    if not others:  # the user left cuDNN as the only backend: theirs to keep
        yield
        return
    with sdpa_kernel(others):
        yield
