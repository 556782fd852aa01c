"""tensor_scan.py: which objects hold tensor memory, by bounded walks that never run user code."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from qwen3_jupyter import holders, tensor_scan


def test_holds_device_memory_walks_containers_and_model_outputs() -> None:
    torch = pytest.importorskip("torch")
    from transformers.modeling_outputs import CausalLMOutputWithPast

    t = torch.ones(4)
    assert tensor_scan.holds_device_memory(t)
    assert tensor_scan.holds_device_memory(CausalLMOutputWithPast(logits=t))
    assert tensor_scan.holds_device_memory({"a": [1, (2, {"b": t})]})
    assert tensor_scan.holds_device_memory(torch.nn.Linear(2, 2))
    assert not tensor_scan.holds_device_memory(torch.nn.ReLU())
    assert not tensor_scan.holds_device_memory({"a": [1, "two", 3.0], "b": None})

    class Box:
        def __init__(self, inner: object) -> None:
            self.inner = inner

    assert tensor_scan.holds_device_memory(Box(Box(t)))
    deep: object = t
    for _ in range(tensor_scan.WALK_DEPTH + 1):
        deep = [deep]
    assert tensor_scan.holds_device_memory(deep), "past the bounded depth, the exact walk too"
    assert tensor_scan.holds_device_memory([*range(tensor_scan.WALK_BUDGET), t]), (
        "and past the bounded visits"
    )


def test_a_walk_cut_short_is_finished_exactly_and_an_unfinished_one_keeps_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cleanup deletes only what it knows holds memory: a table too big to walk is the
    user's result and stays. A big entry found empty is not walked again at the next cleanup
    (autoclean runs one after every cell)."""
    torch = pytest.importorskip("torch")  # holds_device_memory looks where torch is imported
    table = list(range(20_000))
    assert not tensor_scan.holds_device_memory(table)
    walks: list[int] = []
    monkeypatch.setattr(tensor_scan.TensorScan, "visit_all", lambda self, root: walks.append(1))
    assert not tensor_scan.holds_device_memory(table) and walks == [], "walked again"
    table.append(torch.ones(1))
    monkeypatch.undo()
    assert tensor_scan.holds_device_memory(table), "a list that changed size is walked again"
    monkeypatch.setattr(tensor_scan, "EXACT_BUDGET", 3)
    unsure = [[object()] for _ in range(20_000)]
    assert not tensor_scan.holds_device_memory(unsure), "unsure keeps it"
    monkeypatch.setattr(tensor_scan.TensorScan, "visit_all", lambda self, root: walks.append(1))
    assert not tensor_scan.holds_device_memory(unsure) and walks == [], (
        "a walk that ran out is not paid again at every cleanup"
    )
    assert "the search stopped inside Out[3]" in holders._other_hint(["Out[3]"])


def test_a_container_beyond_the_exact_budget_is_not_walked_to_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--verbose` walked 1.5 M records, a 200,000-entry dict of lists and 300,000 records in
    `Out` to the end of its budget each time, 3 s that ended in "the search stopped inside
    …" all the same. A list, tuple, set or dict with that many tracked items now stops at once
    (a yes/no question still walks: a tensor near its end answers it)."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(tensor_scan, "EXACT_BUDGET", 50)
    referents: list[int] = []
    counted = tensor_scan._referents

    def counting(obj: Any) -> list[Any]:
        referents.append(1)
        return counted(obj)

    monkeypatch.setattr(tensor_scan, "_referents", counting)
    rows: list[Any] = [{"tags": []} for _ in range(60)]
    for root in (rows, {i: row for i, row in enumerate(rows)}, tuple(rows)):
        scan = tensor_scan.TensorScan(torch)
        scan.visit_all(root)
        assert scan.stopped and referents == [], type(root)
    small = tensor_scan.TensorScan(torch)
    small.visit_all(rows[:10])
    assert not small.stopped and referents, "a smaller one is walked"
    plain = tensor_scan.TensorScan(torch)
    plain.visit_all(list(range(60)))
    assert not plain.stopped, "untracked items (numbers) cost the walk nothing"
    rows.append(torch.ones(1))
    assert tensor_scan.holds_device_memory(rows), "a yes/no question walks on"


def test_tensors_in_pandas_object_arrays_and_module_attributes_are_seen() -> None:
    """A DataFrame column of tensors (pandas keeps it in a Cython object whose `vars()` is
    empty), an object array and what a cell or a hook stored on a module (`m.saved = [x]`)
    were invisible: left in `Out` by a cleanup, and blamed on "module globals" by --verbose."""
    torch = pytest.importorskip("torch")
    numpy = pytest.importorskip("numpy")
    pandas = pytest.importorskip("pandas")

    column = numpy.empty(2, dtype=object)
    column[0] = torch.ones(3)
    table = pandas.DataFrame({"embedding": [torch.ones(5), torch.ones(5)]})

    module: Any = torch.nn.Module

    class Recorder(module):
        def __init__(self) -> None:
            super().__init__()
            self.saved = [torch.ones(10)]

    layer = torch.nn.Linear(4, 4)
    layer.cache = torch.ones(1000)
    for value in (column, [column], table, Recorder()):
        assert tensor_scan.holds_device_memory(value), type(value)
    scan = tensor_scan.TensorScan(torch)
    scan.visit(layer)
    if scan.truncated:
        scan.visit_all(layer)
    assert scan.nbytes() == (16 + 4 + 1000) * 4, "weights, bias and what was stored on it"
    assert not tensor_scan.holds_device_memory(pandas.DataFrame({"n": [1, 2]}))


def test_holds_device_memory_sees_through_methods_partials_slots_generators() -> None:
    torch = pytest.importorskip("torch")
    import functools

    t = torch.ones(4)

    class Slotted:
        __slots__ = ("__w",)

        def __init__(self, w: object) -> None:
            self.__w = w

    def gen() -> Iterator[int]:
        held = t
        yield int(held.numel())

    started = gen()
    next(started)
    for holder in (t.sum, functools.partial(torch.add, t), Slotted(t), started, t.numpy()):
        assert tensor_scan.holds_device_memory(holder), holder
        assert tensor_scan.holds_device_memory([holder]), f"one level down: {holder}"
    assert not tensor_scan.holds_device_memory(len), "a builtin function's module is not entered"
    assert not tensor_scan.holds_device_memory(functools.partial(max, 1))


def test_looking_into_a_generator_keeps_nothing_it_lets_go_later() -> None:
    """Reading a suspended generator's `f_locals` (Python < 3.13) left a copy of its locals on
    the frame: a tensor the generator deleted afterwards stayed alive."""
    torch = pytest.importorskip("torch")
    import weakref

    def gen() -> Iterator[int]:
        held = torch.ones(1000)
        yield 1
        del held
        yield 2

    started = gen()
    next(started)
    (tensor,) = [r for r in gc.get_referents(started) if isinstance(r, torch.Tensor)]
    ref = weakref.ref(tensor)
    del tensor
    assert tensor_scan.holds_device_memory(started)
    next(started)
    gc.collect()
    assert ref() is None


def test_a_verbose_scan_never_unpacks_saved_tensors() -> None:
    """Reading an autograd node's `_saved_*` runs its unpack hook: torch.utils.checkpoint ran
    the forward again inside a cleanup, `save_on_cpu` copied back to the GPU."""
    torch = pytest.importorskip("torch")
    unpacked = []

    def unpack(value: object) -> object:
        unpacked.append(1)
        return value

    w = torch.ones(1000, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda value: value, unpack):
        loss = (w * 2).exp().sum()
    scan = tensor_scan.TensorScan(torch)
    scan.visit(loss, 0)
    assert not unpacked
    assert scan.tensor_count >= 2, "the loss and the leaf w it keeps through its graph"


def test_a_graph_whose_nodes_are_wrapped_anew_is_walked_to_its_leaves() -> None:
    """torch 2.11 hands Python a new wrapper for an autograd node once none is held: the walk
    kept only ids, the next node's wrapper got a freed one's id and was skipped as walked,
    and `loss = (w * 2).exp().sum(); del w` charged the loss alone (torch 2.13 keeps its
    wrappers, so this builds the same kind of graph by hand)."""
    torch = pytest.importorskip("torch")

    class Node:
        def __init__(self, name: str, below: list[str], leaves: dict[str, Any]) -> None:
            self.name, self._below, self._leaves = name, below, leaves

        @property
        def next_functions(self) -> tuple[tuple[Any, int], ...]:  # a new wrapper each time
            return tuple((_node(child, self._leaves), 0) for child in self._below)

    class AccumulateGrad:
        def __init__(self, variable: Any) -> None:
            self.variable = variable
            self.next_functions = ()

    chain = {"sum": ["exp"], "exp": ["mul"], "mul": ["w", "v"], "w": [], "v": []}

    def _node(name: str, leaves: dict[str, Any]) -> Any:
        return AccumulateGrad(leaves[name]) if name in leaves else Node(name, chain[name], leaves)

    leaves = {"w": torch.ones(1000), "v": torch.ones(500)}
    scan = tensor_scan.TensorScan(torch)
    scan._add_graph(_node("sum", leaves))
    assert scan.nbytes() == 6000 and scan.tensor_count == 2, scan.storages


def test_a_detached_slice_counts_the_whole_storage_it_keeps() -> None:
    """`x[:5].detach()` has no `_base` and no offset, yet keeps all of `x`'s storage alive once
    `x` is gone: counted by its own size, a 190 MiB holder read 195 KiB."""
    torch = pytest.importorskip("torch")
    from qwen3_jupyter.memory import live_tensor_bytes

    whole = torch.zeros(1_000_000)
    first_row = whole.view(100, -1)[0].detach()
    del whole
    scan = tensor_scan.TensorScan(torch)
    scan.visit_all([first_row])
    assert scan.nbytes() == 4_000_000
    assert live_tensor_bytes()["cpu"] >= 4_000_000
