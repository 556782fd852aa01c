"""A released model's weights are still held only while their own storages live: a newer
tensor at an address the old weights had is not them.

The weights here live in a buffer of our own (`torch.frombuffer`), so a second tensor can be
made at exactly their address, as CUDA's caching allocator does when the next model of the
same shape takes the blocks the last one gave back."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from qwen3_jupyter.weights_held import released_weights, still_held


def _module_over(memory: bytearray) -> Any:
    torch = pytest.importorskip("torch")
    module = torch.nn.Module()
    weight = torch.frombuffer(memory, dtype=torch.float32)
    module.weight = torch.nn.Parameter(weight, requires_grad=False)
    return module


def test_a_new_tensor_at_the_released_weights_address_is_not_the_old_weights() -> None:
    torch = pytest.importorskip("torch")
    memory = bytearray(4 * 2**20)
    module = _module_over(memory)
    released = released_weights("old", module)
    del module
    gc.collect()
    newer = torch.frombuffer(memory, dtype=torch.float32)  # the old weights' very address
    assert newer.untyped_storage().data_ptr() in {address for _, address in released.storages}
    assert still_held(released, None) is None


def test_weights_a_name_still_reaches_are_held() -> None:
    """The control: the same weights kept by a variable are found, with their size."""
    memory = bytearray(4 * 2**20)
    module = _module_over(memory)
    released = released_weights("old", module)
    kept = module.weight
    del module
    gc.collect()
    held = still_held(released, None)
    assert held is not None and held.model == "old" and held.nbytes == 4 * 2**20
    del kept
    gc.collect()
    assert still_held(released, None) is None
