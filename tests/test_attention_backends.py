"""engines/attention.py: our generation never lets torch pick cuDNN attention (a plan built per
new shape, see the module), and the user's own flags are untouched outside it.

The flags are torch's process-wide SDPA switches, which exist on CPU builds too, so the
kernel test reads them from inside the model's forward in a real kernel: what a GPU would see.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qwen3_jupyter.engines.attention import CUDNN_ATTENTION_ENV, planless_attention
from tests.kernel import Kernel, ok
from tests.kernel_pool import KernelPool


def _flags() -> dict[str, bool]:
    cuda = torch.backends.cuda
    return {
        "cudnn": cuda.cudnn_sdp_enabled(),
        "flash": cuda.flash_sdp_enabled(),
        "efficient": cuda.mem_efficient_sdp_enabled(),
        "math": cuda.math_sdp_enabled(),
    }


def test_cudnn_is_off_inside_and_every_flag_is_back_outside() -> None:
    before = _flags()
    assert before["cudnn"], "torch's default: cuDNN attention enabled"
    with planless_attention():
        assert _flags() == {**before, "cudnn": False}
    assert _flags() == before


def test_a_backend_the_user_switched_off_stays_off() -> None:
    torch.backends.cuda.enable_flash_sdp(False)
    try:
        with planless_attention():
            assert _flags() == {"cudnn": False, "flash": False, "efficient": True, "math": True}
        assert _flags()["flash"] is False and _flags()["cudnn"] is True
    finally:
        torch.backends.cuda.enable_flash_sdp(True)


def test_the_environment_keeps_torchs_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CUDNN_ATTENTION_ENV, "1")
    with planless_attention():
        assert _flags()["cudnn"] is True


def test_an_interrupt_inside_still_restores_the_flags() -> None:
    with pytest.raises(KeyboardInterrupt), planless_attention():
        raise KeyboardInterrupt
    assert _flags()["cudnn"] is True


SPY = """
import torch
from qwen3_jupyter.session import SESSION
seen = []
hook = SESSION.loaded.model.register_forward_pre_hook(
    lambda module, args: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
"""


@pytest.fixture(scope="module")
def spied(kernel_pool: KernelPool) -> Iterator[Kernel]:
    kernel = kernel_pool.take()
    try:
        ok(kernel, "%load_ext qwen3_jupyter")
        ok(kernel, "%qwen3 --model tiny --eager --max-new-tokens 2 load")
        ok(kernel, SPY)
        yield kernel
    finally:
        kernel.shutdown()


@pytest.mark.parametrize("path", ["--eager", "--fast"])
def test_every_forward_of_a_call_runs_without_cudnn_attention(spied: Kernel, path: str) -> None:
    ok(spied, "seen.clear()")
    ok(spied, f"%qwen3 {path} --greedy --no-think --ignore-eos --max-new-tokens 6 hi")
    seen = spied.value("seen")
    # eager: prefill + one forward per new token; fast: the prefill (the step is its own code)
    assert len(seen) == (6 if path == "--eager" else 1), seen
    assert not any(seen), "a forward ran with cuDNN attention allowed"
    assert spied.value("torch.backends.cuda.cudnn_sdp_enabled()") is True  # the user's, after


def test_batches_run_without_cudnn_attention_too(spied: Kernel) -> None:
    ok(spied, "seen.clear()")
    ok(spied, "import qwen3_jupyter")
    ok(
        spied,
        "qwen3_jupyter.generate_batch(['a', 'bb'], decode='eager', greedy=True, max_new_tokens=3,"
        " progress=False)",
    )
    seen = spied.value("seen")
    assert seen and not any(seen), seen


def test_the_attention_bench_times_new_and_seen_shapes_both_ways(tmp_path: Path) -> None:
    from qwen3_jupyter.bench import attention

    out = tmp_path / "attention.json"
    assert (
        attention.main(["--shapes", "2", "--heads", "4", "--kv-heads", "2", "--json", str(out)])
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu"
    seen_lengths: set[int] = set()
    for phase in ("decode", "prefill"):
        assert list(figures[phase]) == ["grouped", "repeated"]
        for sides in figures[phase].values():
            assert list(sides) == ["torch's choice", "ours (no cuDNN)"]
            mine, theirs = (set(side["lengths"]) for side in sides.values())
            assert len(mine) == len(theirs) == 2
            assert not mine & theirs, "each side must meet shapes the other never built"
            seen_lengths |= mine | theirs
            for side in sides.values():
                assert side["backend"] != "cuDNN" or side is sides["torch's choice"]
                assert side["new_ms"] > 0 and side["seen_ms"] > 0
    assert len(seen_lengths) == 8, "every form and side of a phase has key lengths of its own"
