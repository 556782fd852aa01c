"""A call's `--seed` is the call's own: torch's random state is put back after it.

Why: seeding meant `torch.manual_seed(seed)`, which set the notebook's own random streams too,
so after one seeded call `torch.rand(3)` gave the same numbers whatever the user had seeded
(`torch.manual_seed(0)` and `torch.manual_seed(1)` alike). Unseeded calls draw from the
notebook's streams as any torch code does; a seeded one leaves them where they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def seeded(seed: int | None, device: str) -> Iterator[None]:
    """Seed torch's CPU and CUDA generators with `seed` for the block, then restore their
    states (none to restore: nothing happens). On a CUDA device every GPU's state is saved:
    `manual_seed` seeds them all. Restoring happens outside any CUDA graph capture (the block
    has ended), which is when a generator's state may be set."""
    if seed is None:
        yield
        return
    import torch

    cpu_state = torch.get_rng_state()
    on_cuda = device.startswith("cuda") or torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if on_cuda else None
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
