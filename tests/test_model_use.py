"""One thread at a time uses the kernel's model: a generation, batch, unload or model switch
from another thread meanwhile is refused in one line, and the running one is left intact.

The running generation is a real one, held mid-decode by its own streaming callback (so the
test does not depend on how fast the CPU decodes)."""

from __future__ import annotations

import threading

import pytest

from qwen3_jupyter.models import ModelBusy, ModelHolder
from tests.kernel import Kernel, ok

BUSY = "the model is busy: a generation in thread 'background'"

START_PAUSED_GENERATION = """
import threading
from qwen3_jupyter.session import SESSION
from qwen3_jupyter.generation import GenerationOptions
engine = SESSION.engine(decode={decode!r})
options = GenerationOptions(max_new_tokens=12, greedy=True, think=False, ignore_eos=True)
reference = SESSION.ask(engine, "Count to five.", options).token_ids
started, resume, out = threading.Event(), threading.Event(), []
def on_text(text):
    started.set()
    resume.wait(120)
def ask():
    out.append(SESSION.ask(engine, "Count to five.", options, on_text=on_text, stream_interval=0))
background = threading.Thread(target=ask, name="background")
background.start()
assert started.wait(120), "the background generation never streamed"
"""

REFUSAL = """
def _refusal(call):
    try:
        call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None
"""


@pytest.mark.parametrize("decode", ["fast", "eager"])
def test_a_second_generation_while_one_runs_is_refused_and_the_first_is_intact(
    kernel: Kernel, decode: str
) -> None:
    ok(kernel, "%qwen3 --max-new-tokens 2 load")
    ok(kernel, START_PAUSED_GENERATION.format(decode=decode))
    try:
        refusals = {
            "%qwen3": kernel.run(f"%qwen3 --{decode} --greedy --max-new-tokens 4 hi"),
            "--unload": kernel.run("%qwen3 --unload"),
            "another model": kernel.run("%qwen3 --dtype bfloat16 --max-new-tokens 2 hi"),
        }
        for what, ex in refusals.items():
            message = ex.stderr.strip()
            assert ex.status == "error" and message.startswith(f"UsageError: {BUSY}"), what
            assert len(message.splitlines()) == 1 and "Traceback" not in message, what
        ok(kernel, "import qwen3_jupyter")
        ok(kernel, REFUSAL)
        name, message = kernel.value(
            "_refusal(lambda: qwen3_jupyter.generate_batch(['a'], progress=False))"
        )
        assert name == "ModelBusy" and message.startswith(BUSY)
        assert kernel.value("SESSION.loaded.dtype") == "float32", "the model was switched"
    finally:
        ok(kernel, "resume.set(); background.join(120)")
    assert kernel.value("out[0].token_ids == reference and len(reference)") == 12
    ok(kernel, "from qwen3_jupyter.models import HOLDER")
    assert kernel.value("HOLDER.user") is None
    ok(kernel, f"%qwen3 --{decode} --greedy --max-new-tokens 2 hi")  # free again


def test_the_holding_thread_may_nest_and_every_way_out_frees_the_model() -> None:
    holder = ModelHolder()
    with holder.in_use("a batch"), holder.in_use("a generation"):  # a batch's chunks nest
        assert holder.user == "a batch in thread 'MainThread'"
    assert holder.user is None
    with pytest.raises(KeyboardInterrupt), holder.in_use("a generation"):
        raise KeyboardInterrupt
    entered, leave, errors = threading.Event(), threading.Event(), []

    def hold() -> None:
        with holder.in_use("a warm-up"):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hold, name="warmer")
    thread.start()
    assert entered.wait(10)
    try:
        with holder.in_use("a generation"):
            errors.append("entered while another thread held the model")
    except ModelBusy as exc:
        assert str(exc).startswith("the model is busy: a warm-up in thread 'warmer'; wait")
    finally:
        leave.set()
        thread.join(10)
    assert not errors
    with holder.in_use("a generation"):  # free once the other thread left
        assert holder.user == "a generation in thread 'MainThread'"
