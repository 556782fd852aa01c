"""Weights of a released model that something still holds, and the names holding them.

Why: `%qwen3 --unload` proved the unload with a weakref to the model object alone, so
`w = model.model.embed_tokens.weight` kept 37.1 of tiny's 37.4 MiB while the line said "model
object freed"; and a model still held (`m = ...`) went on living beside the next load, which
said nothing of it (3.4 GB twice on a GPU for Qwen3-1.7B). A released model's weight storages
are noted at release, and looked for among the live tensors after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .memory import format_bytes, imported_torch, live_storages, storage_span

StorageKey = tuple[str, int]
"""(device, address) of a storage, as `live_storages` keys it."""

NAMES_SHOWN = 3


@dataclass(frozen=True)
class ReleasedWeights:
    """The weights of one released model: its name and its storages' keys and sizes."""

    model: str
    storages: dict[StorageKey, int]
    weak: dict[StorageKey, Any] = field(default_factory=dict)
    """A weak reference to each storage (torch's `StorageWeakRef`), where torch has them: an
    address alone may be a newer tensor's. CUDA's allocator hands a freed block to the next
    tensor of its size, so the next model of the same shape (a --dtype switch back, an
    Instruct after a Thinking of one size) sat at the old weights' addresses and was said to
    be the old model still in memory."""

    def alive(self) -> dict[StorageKey, int]:
        """Which of these storages still live: by their weak references, which also see one
        that only C code holds; without them, those at an address a live tensor has."""
        if self.weak:
            return {key: self.storages[key] for key, ref in self.weak.items() if not ref.expired()}
        return {key: size for key, size in live_storages().items() if key in self.storages}


def released_weights(name: str, model: Any) -> ReleasedWeights:
    """What to remember of a model that is about to be released (see `ReleasedWeights`)."""
    try:
        from torch.multiprocessing.reductions import StorageWeakRef
    except ImportError:  # a torch without it: addresses alone, as before
        return ReleasedWeights(name, weight_storages(model))
    storages: dict[StorageKey, int] = {}
    weak: dict[StorageKey, Any] = {}
    for tensor in _weights(model):
        address, size = storage_span(tensor)
        key = (str(tensor.device), address)
        storages[key], weak[key] = size, StorageWeakRef(tensor.untyped_storage())
    return ReleasedWeights(name, storages, weak)


@dataclass(frozen=True)
class StillHeld:
    """What of a released model's weights is alive, and which user names reach it."""

    model: str
    nbytes: int
    names: tuple[str, ...]

    def holders(self) -> str:
        """`held by w, m: del w, m frees it`, or that no variable of the user's reaches it."""
        if not self.names:
            return "reached by none of your variables (a module or a cache keeps it)"
        shown = ", ".join(self.names[:NAMES_SHOWN])
        more = f" and {len(self.names) - NAMES_SHOWN} more" if len(self.names) > NAMES_SHOWN else ""
        return f"held by {shown}{more}: del {shown}{more} frees it"


def weight_storages(model: Any) -> dict[StorageKey, int]:
    """The storages of `model`'s parameters and buffers (meta ones hold no memory)."""
    storages: dict[StorageKey, int] = {}
    for tensor in _weights(model):
        address, size = storage_span(tensor)
        storages[(str(tensor.device), address)] = size
    return storages


def _weights(model: Any) -> list[Any]:
    """`model`'s parameters and buffers that hold memory (meta ones do not)."""
    return [t for t in (*model.parameters(), *model.buffers()) if not t.is_meta]


def still_held(released: ReleasedWeights, shell: Any | None) -> StillHeld | None:
    """What of `released` is alive now (None: all of it is gone), with the names of the user's
    variables and outputs that reach it (a walk of each of them): after a release only."""
    if imported_torch() is None:
        return None
    alive = released.alive()
    if not alive:
        return None
    return StillHeld(released.model, sum(alive.values()), _names_reaching(set(alive), shell))


def _names_reaching(keys: set[StorageKey], shell: Any | None) -> tuple[str, ...]:
    """The user's variables (a script's globals outside IPython) and outputs reaching `keys`."""
    from .holders import namespace_walls
    from .tensor_scan import TensorScan
    from .user_namespace import script_variables, user_variables

    torch = imported_torch()
    walls = namespace_walls(shell)
    candidates = dict(user_variables(shell) if shell is not None else script_variables() or {})
    out = getattr(getattr(shell, "history_manager", None), "output_hist", None) or {}
    candidates.update({f"Out[{key}]": value for key, value in list(out.items())})
    names = []
    for name, value in candidates.items():
        scan = TensorScan(torch, walls=walls)
        scan.visit(value)
        if keys & set(scan.storages):
            names.append(name)
    return tuple(names)


def held_notice(held: StillHeld) -> str:
    """What a load says of an earlier model whose weights are still alive beside it."""
    return (
        f"the {held.model} unloaded earlier is still in memory ({format_bytes(held.nbytes)}), "
        f"{held.holders()}"
    )
