"""The first `%qwen3` of a kernel: importing torch and choosing the model.

An interrupt during `import torch` used to leave torch half registered, so every later call (and
a plain `import torch`) failed until a kernel restart. The test makes the import slow at a fixed
point inside torch (an import hook sleeping as `torch._decomp` is looked up), so the interrupt
lands inside it every time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel import Kernel, ok

SLOW_TORCH_IMPORT = """
import pathlib, sys, time
class _SlowTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch._decomp":
            pathlib.Path({flag!r}).write_text("importing")
            time.sleep(3)
        return None
sys.meta_path.insert(0, _SlowTorch())
assert "torch" not in sys.modules, "control: torch is imported by the first call"
"""


@pytest.fixture()
def new_kernel(kernel_env: dict[str, str]) -> Iterator[Kernel]:
    kernel = Kernel(kernel_env)
    try:
        ok(kernel, "%load_ext qwen3_jupyter\nkeep = 42")
        yield kernel
    finally:
        kernel.shutdown()


def test_an_interrupt_while_torch_imports_is_one_line_and_torch_still_works(
    new_kernel: Kernel, tmp_path: Path
) -> None:
    _interrupt_the_slowed_import(new_kernel, SLOW_TORCH_IMPORT, tmp_path / "importing")
    ok(new_kernel, "import torch\nassert torch.ones(2).sum().item() == 2")
    ok(new_kernel, "%qwen3 --greedy --max-new-tokens 2 hi")
    assert new_kernel.value("(_qwen3.completion_tokens, keep)") == (2, 42)


def _interrupt_the_slowed_import(kernel: Kernel, hook: str, flag: Path) -> None:
    """Install `hook` (an import hook that writes `flag` and sleeps), start the first call,
    interrupt it inside the slowed import: one line, saying so."""
    ok(kernel, hook.format(flag=str(flag)))
    msg_id = kernel.start("%qwen3 --greedy --max-new-tokens 2 hi")
    deadline = time.monotonic() + 90
    while not flag.exists():
        assert time.monotonic() < deadline, "the first call never reached the slowed import"
        time.sleep(0.02)
    kernel.interrupt()
    ex = kernel.collect(msg_id, timeout=120)
    message = ex.stderr.strip()
    assert ex.status == "error" and message.startswith("UsageError: interrupted while importing")
    assert len(message.splitlines()) == 1, message


def test_naming_the_loaded_model_again_reuses_it_as_loaded(kernel: Kernel) -> None:
    """`--model tiny` after `--dtype bfloat16` silently reloaded tiny in float32."""
    ok(kernel, "%qwen3 --dtype bfloat16 --greedy --max-new-tokens 2 hi")
    ok(kernel, "from qwen3_jupyter.session import SESSION\nfirst = id(SESSION.loaded.model)")
    again = ok(kernel, "%qwen3 --model tiny --greedy --max-new-tokens 2 hi")
    assert kernel.value("(id(SESSION.loaded.model) == first, SESSION.loaded.dtype)") == (
        True,
        "bfloat16",
    )
    assert "loading" not in str(again.messages)
    switched = ok(kernel, "%qwen3 --model tiny --dtype float32 --greedy --max-new-tokens 2 hi")
    assert "loading tiny on cpu (float32)" in str(switched.messages), "the reload is said"
    empty = kernel.run('%qwen3 --model "" hi')
    assert empty.status == "error" and empty.stderr.strip().startswith(
        "UsageError: --model needs a name"
    ), empty.stderr
    assert kernel.value("SESSION.loaded.dtype") == "float32"


def test_loading_says_how_far_it_has_got(kernel: Kernel) -> None:
    """A large checkpoint loads long enough that "loading …" alone reads like a hang: the line
    counts the checkpoint's tensors as a percentage (through transformers' own loading bar,
    which stays off: in a kernel it is widgets that outlive the call)."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):
        pytest.skip("this transformers release has no set_tqdm_hook: loading shows no percentage")
    ok(kernel, "%qwen3 --unload")
    load = ok(kernel, "%qwen3 --model tiny --dtype float32 --greedy --max-new-tokens 2 hi")
    said = [t for t in load.texts() if t.startswith("*loading tiny on cpu (float32)")]
    assert said[0] == "*loading tiny on cpu (float32)…*", said
    percents = [int(t.rsplit(": ", 1)[1].rstrip("%*")) for t in said[1:]]
    assert len(percents) > 2 and percents == sorted(percents) and percents[-1] == 100, said
    widgets = [
        m for m in load.of_type("comm_open") if m["content"]["target_name"] == "jupyter.widget"
    ]
    assert not widgets, widgets


LOOP_OF_CHATS = """
import pathlib, qwen3_jupyter
answers = []
def started(text):
    pathlib.Path({flag!r}).write_text("streaming")
with qwen3_jupyter.inference(decode="eager", think=False, ignore_eos=True) as chat:
    for _ in range(3):
        answers.append(chat("Tell me all", max_new_tokens=3000, on_text=started).stop_reason)
"""

LOOP_OF_MAGICS = """
for _ in range(3):
    get_ipython().run_line_magic(
        "qwen3", "--eager --no-think --ignore-eos --max-new-tokens 3000 Tell me all"
    )
"""

LOOP_OF_BATCHES = """
import pathlib, qwen3_jupyter
batches = []
for _ in range(3):
    pathlib.Path({flag!r}).write_text("batching")
    batches.append(qwen3_jupyter.generate_batch(
        ["Tell me all", "And more"], decode="eager", think=False, ignore_eos=True,
        max_new_tokens=3000, progress=False).report.interrupted)
"""


def wait_for_file(flag: Path) -> None:
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert time.monotonic() < deadline, "the call never started streaming"
        time.sleep(0.02)


def wait_for_answer_text(kernel: Kernel, msg_id: str) -> None:
    """Read the kernel's messages until the cell's answer display streams text."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            msg = kernel.kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        text = msg["content"].get("data", {}).get("text/markdown", "")
        mine = msg["parent_header"].get("msg_id") == msg_id
        if mine and msg["msg_type"] == "update_display_data" and text and text[0] != "*":
            return
    raise TimeoutError("the answer never started streaming")


def test_one_interrupt_stops_a_loop_of_calls_in_its_cell(kernel: Kernel, tmp_path: Path) -> None:
    """The interrupted call keeps its partial answer; the loop's next call does not start (it
    used to: three calls of a loop ran 28 s after one press of the stop button)."""
    flag = tmp_path / "streaming"
    msg_id = kernel.start(LOOP_OF_CHATS.format(flag=str(flag)))
    wait_for_file(flag)
    interrupted_at = time.monotonic()
    kernel.interrupt()
    ex = kernel.collect(msg_id, timeout=120)
    assert time.monotonic() - interrupted_at < 10, "the loop went on"
    assert ex.status == "error" and ex.error is not None, ex.stdout
    assert ex.error["ename"] == "KeyboardInterrupt", ex.error
    assert kernel.value("answers") == ["interrupted"]

    msg_id = kernel.start(LOOP_OF_MAGICS)
    wait_for_answer_text(kernel, msg_id)
    interrupted_at = time.monotonic()
    kernel.interrupt()
    ex = kernel.collect(msg_id, timeout=120)
    assert time.monotonic() - interrupted_at < 10, "the loop went on"
    assert "interrupted: partial answer kept" in ex.stdout
    message = ex.stderr.strip()
    assert ex.status == "error" and message.startswith("UsageError: not started: a call earlier")
    assert len(message.splitlines()) == 1, message

    flag = tmp_path / "batching"
    msg_id = kernel.start(LOOP_OF_BATCHES.format(flag=str(flag)))
    wait_for_file(flag)
    time.sleep(2)  # the model is loaded: the batch decodes its 2 × 3000 tokens by then
    interrupted_at = time.monotonic()
    kernel.interrupt()
    ex = kernel.collect(msg_id, timeout=120)
    assert time.monotonic() - interrupted_at < 10, "the loop went on"
    assert ex.error is not None and ex.error["ename"] == "KeyboardInterrupt", ex.error
    assert kernel.value("batches") == [True], "the interrupted batch returned what it had"

    ok(kernel, "%qwen3 --greedy --max-new-tokens 2 hi")  # the next cell starts clear
    assert kernel.value("_qwen3.completion_tokens") == 2


SLOW_MODEL_CODE_IMPORT = """
import pathlib, sys, time
class _SlowModelCode:
    def find_spec(self, name, path=None, target=None):
        if name == "sympy.assumptions":
            pathlib.Path({flag!r}).write_text("importing")
            time.sleep(3)
        return None
sys.meta_path.insert(0, _SlowModelCode())
assert "transformers.models.qwen3.modeling_qwen3" not in sys.modules, "control: not yet imported"
"""


def test_an_interrupt_while_the_model_code_imports_leaves_loading_working(
    new_kernel: Kernel, tmp_path: Path
) -> None:
    """The first load imports transformers' Qwen3 code (a thousand modules); an interrupt inside
    that import left a module half made, and every later load failed ("Could not import module
    'Qwen3ForCausalLM'") until a restart lost the notebook's variables."""
    _interrupt_the_slowed_import(new_kernel, SLOW_MODEL_CODE_IMPORT, tmp_path / "importing")
    ok(new_kernel, "%qwen3 --greedy --max-new-tokens 2 hi")
    assert new_kernel.value("(_qwen3.completion_tokens, keep)") == (2, 42)
