"""One thread at a time uses the kernel's model: a generation, batch, unload or model switch
from another thread meanwhile is refused in one line, and the running one is left intact.

The running generation is a real one, held mid-decode by its own streaming callback (so the
test does not depend on how fast the CPU decodes)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.engines.eager import EagerEngine
from qwen3_jupyter.engines.fast import FastEngine
from qwen3_jupyter.engines.local import LocalEngine
from qwen3_jupyter.generation import GenerationOptions
from qwen3_jupyter.model_use import ModelBusy
from qwen3_jupyter.models import HOLDER, ModelChoice, ModelHolder
from tests.kernel import Kernel, ok
from tests.test_fast_engine import perturb

BUSY = "the model is busy: a generation in thread 'background'"
"""The refusal's start ("…; wait for it to end, then run this again" follows)."""

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
engine.status = status_of_background = lambda text: None
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
        ok(kernel, "busy = _refusal(lambda: qwen3_jupyter.generate_batch(['a'], progress=False))")
        name, message = kernel.value("busy")  # the cell also says the main thread's notices
        assert name == "ModelBusy" and message.startswith(BUSY)
        # A Python caller is told what it can call (it may have no magics at all).
        assert "(or stop it: qwen3_jupyter.stop())" in message and "%" not in message, message
        name, message = kernel.value("_refusal(qwen3_jupyter.unload)")
        assert name == "ModelBusy" and message.startswith(BUSY), message
        assert kernel.value("SESSION.loaded.dtype") == "float32", "the model was switched"
        assert kernel.value("engine.status is status_of_background"), "a refused call set it"
        assert "conversation cleared" in ok(kernel, "%qwen3 --reset").stdout  # needs no model
        ok(kernel, "from qwen3_jupyter import monitor")
        noted = "len(monitor.get_monitor().retained_history)"
        count = kernel.value(noted)
        ok(kernel, "report = qwen3_jupyter.cleanup()")
        summary = kernel.value("report.summary()")
        busy = "the model is busy with a generation in thread 'background'"
        assert f"skipped generation leftovers, allocator caches: {busy}" in summary, summary
        assert "the figures include what it allocated or freed meanwhile" in summary
        assert kernel.value("[a.name for a in report.actions if a.skipped]") == [
            "generation leftovers",
            "allocator caches",
        ]
        # The gauge's "memory left after cleanup keeps growing" compares cleanups: one taken
        # while a batch grows its cache in another thread would count the batch as drift.
        assert kernel.value(noted) == count, "a busy cleanup's figures fed the drift"
    finally:
        ok(kernel, "resume.set(); background.join(120)")
    assert kernel.value("out[0].token_ids == reference and len(reference)") == 12
    ok(kernel, "qwen3_jupyter.cleanup()")
    assert kernel.value(noted) == count + 1, "control: a cleanup is noted"
    ok(kernel, "from qwen3_jupyter.models import HOLDER")
    assert kernel.value("HOLDER.use.user") is None
    ok(kernel, f"%qwen3 --{decode} --greedy --max-new-tokens 2 hi")  # free again


def test_the_holding_thread_may_nest_and_every_way_out_frees_the_model() -> None:
    holder = ModelHolder()
    with holder.in_use("a batch"), holder.in_use("a generation"):  # a batch's chunks nest
        assert holder.use.user == "a batch in thread 'MainThread'"
    assert holder.use.user is None
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
        assert str(exc) == (  # a warm-up has no step to stop at: no --stop offered
            "the model is busy: a warm-up in thread 'warmer'; wait for it to end, then run this "
            "again"
        )
    finally:
        leave.set()
        thread.join(10)
    assert not errors
    with holder.in_use("a generation"):  # free once the other thread left
        assert holder.use.user == "a generation in thread 'MainThread'"


START_PAUSED_BATCH = """
import threading
import qwen3_jupyter
from qwen3_jupyter.session import SESSION
engine = SESSION.engine(decode="fast")
started, resume, out = threading.Event(), threading.Event(), []
chunk = engine.generate_chunk
def paused_chunk(*args, **kwargs):
    done = chunk(*args, **kwargs)
    started.set()
    resume.wait(120)
    return done
engine.generate_chunk = paused_chunk
def run():
    out.append(qwen3_jupyter.generate_batch(
        ["one", "two", "three", "four"], batch_size=4, decode="fast", greedy=True,
        max_new_tokens=4, progress=False))
background = threading.Thread(target=run, name="batcher")
background.start()
assert started.wait(120), "the background batch never finished a chunk"
"""


def test_a_refused_batch_leaves_the_running_batch_its_shapes(kernel: Kernel) -> None:
    """The fast path drops its batch shapes when a batch ends; a batch refused while another
    runs must not drop the running one's (it would rebuild, or fail mid-capture on a GPU)."""
    ok(kernel, "%qwen3 --max-new-tokens 2 load")
    ok(kernel, START_PAUSED_BATCH)
    shapes = "sorted(batch for batch, _ in engine.states)"
    try:
        assert 4 in kernel.value(shapes)
        ok(kernel, REFUSAL)
        name, message = kernel.value(
            "_refusal(lambda: qwen3_jupyter.generate_batch(['a', 'b'], decode='fast', "
            "progress=False))"
        )
        assert name == "ModelBusy"
        assert message.startswith("the model is busy: a batch (generate_batch) in thread 'batcher'")
        assert 4 in kernel.value(shapes), "the refused call dropped the running batch's shape"
        ok(kernel, "from qwen3_jupyter.generation import GenerationOptions")
        name, _ = kernel.value(  # the engine's own entry, as the magics' --file reaches it
            "_refusal(lambda: engine.generate_batch(['a', 'b'], GenerationOptions(), "
            "progress=False))"
        )
        assert name == "ModelBusy"
        assert 4 in kernel.value(shapes), "the engine's refused batch dropped the running shape"
    finally:
        ok(kernel, "resume.set(); background.join(120); del engine.generate_chunk")
    assert kernel.value("[len(r.token_ids) for r in out[0]]") == [4, 4, 4, 4]
    assert 4 not in kernel.value(shapes), "the batch's own end gives its shape back"


def test_unloading_while_a_thread_decodes_says_the_cache_is_kept(fresh_kernel: Kernel) -> None:
    """`%unload_ext` keeps a fast engine a thread decodes on; its line said the decode cache was
    given back all the same."""
    k = fresh_kernel
    ok(k, "%load_ext qwen3_jupyter")
    ok(k, "%qwen3 --model tiny --max-new-tokens 2 load")
    ok(k, START_PAUSED_GENERATION.format(decode="fast"))
    try:
        said = ok(k, "%unload_ext qwen3_jupyter").stdout
        assert "decode cache kept: a call in another thread decodes on it" in said, said
        assert "given back" not in said, said
    finally:
        ok(k, "resume.set(); background.join(120)")


def test_closing_every_engine_skips_one_in_use_and_closes_the_rest() -> None:
    """`%unload_ext` while a thread decodes: the busy fast engine stays, servers still close."""
    from qwen3_jupyter.session import Session

    closed: list[str] = []

    class Engine:
        def __init__(self, name: str, busy: bool) -> None:
            self.name, self.busy = name, busy

        def close(self) -> None:
            if self.busy:
                raise ModelBusy("the model is busy: a batch in thread 'batcher'")
            closed.append(self.name)

    session = Session()
    engines: dict[str, Any] = {
        "fast": Engine("fast", busy=True),
        "http://a/v1": Engine("http://a/v1", busy=False),
    }
    session.engines.update(engines)
    assert session.close_engines() == ["http://a/v1"]
    assert closed == ["http://a/v1"] and list(session.engines) == ["fast"]


def test_tensors_only_a_call_in_another_thread_holds_are_named_as_its_working_memory() -> None:
    """`%qwen3_clean --verbose` during a batch in a thread blamed the batch's cache and
    activations on "module globals, C code or closures"; they are the running call's."""
    torch = pytest.importorskip("torch")
    from qwen3_jupyter.holders import find_holders

    entered, leave = threading.Event(), threading.Event()

    def decode() -> None:
        working = torch.ones(1024, 1024)  # 4 MiB that only this frame holds
        with HOLDER.in_use("a batch"):
            entered.set()
            leave.wait(30)
        del working

    def unnamed_hint() -> str:
        hints = [h.hint for h in find_holders(None) if h.name == "not reachable from a name"]
        assert len(hints) == 1, "4 MiB held by a frame alone is not reachable from a name"
        return hints[0]

    thread = threading.Thread(target=decode, name="batcher")
    thread.start()
    assert entered.wait(30)
    try:
        assert unnamed_hint() == (
            "mostly the working memory of a batch in thread 'batcher': it goes when that call ends"
        )
    finally:
        leave.set()
        thread.join(30)
    working = torch.ones(1024, 1024)  # noqa: F841 (held by this frame, no call running)
    assert "module globals" in unnamed_hint(), "control: no call running, the usual hint"
    with HOLDER.in_use("a batch"):
        assert "module globals" in unnamed_hint(), "this thread's own hold is not elsewhere"


def test_a_hold_an_interrupt_left_behind_is_released_at_the_cell_end() -> None:
    """An interrupt landing exactly as a hold is left can keep the lock; the end of the cell
    (the magics' post_run_cell hook calls release_leftover) gives it back."""
    holder = ModelHolder()
    with holder.in_use("a generation"):  # a hold whose `with` still runs is in use: kept
        assert holder.use.release_leftover() is False
        assert holder.use.user == "a generation in thread 'MainThread'"
    hold = holder.in_use("a generation")

    def leave_a_hold_behind() -> None:
        hold.__enter__()  # its function returns without __exit__, as such an interrupt leaves it

    leave_a_hold_behind()
    assert holder.use.user == "a generation in thread 'MainThread'"
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with holder.in_use("a batch"):
                pass
        except BaseException as exc:  # the test reports it
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(10)
    assert [type(e) for e in errors] == [ModelBusy]
    assert holder.use.release_leftover() is True and holder.use.user is None
    assert holder.use.release_leftover() is False
    hold.__exit__(None, None, None)  # the late exit of a hold given back already: nothing
    errors.clear()
    thread = threading.Thread(target=other)
    thread.start()
    thread.join(10)
    assert errors == []


def test_each_thread_gets_the_notices_its_own_calls_left() -> None:
    from qwen3_jupyter.session import Notices

    notices = Notices()
    notices.append("compiled the decode step for batch 1")
    thread = threading.Thread(target=notices.append, args=("compiled the step for batch 4",))
    thread.start()
    thread.join(10)
    assert notices.take() == ["compiled the decode step for batch 1"]
    assert notices.take() == []


@pytest.mark.parametrize("decode", ["fast", "eager"])
def test_stop_ends_a_generation_in_another_thread_at_its_next_step(
    kernel: Kernel, decode: str
) -> None:
    """An interrupt reaches only the main thread; `%qwen3 --stop` reaches the thread that holds
    the model, which ends as an interrupt would end it: the tokens so far kept."""
    ok(kernel, "%qwen3 --max-new-tokens 2 load")
    ok(kernel, START_PAUSED_GENERATION.format(decode=decode))
    try:
        said = ok(kernel, "%qwen3 --stop").stdout
        assert "asked a generation in thread 'background' to stop at its next step" in said
    finally:
        ok(kernel, "resume.set(); background.join(120)")
    stopped = kernel.value("(out[0].stop_reason, out[0].completion_tokens)")
    assert stopped[0] == "interrupted" and 1 <= stopped[1] < 12, stopped
    ok(kernel, "from qwen3_jupyter.models import HOLDER")
    assert kernel.value("HOLDER.use.user") is None
    assert "nothing to stop" in ok(kernel, "%qwen3 --stop").stdout
    shown = ok(kernel, "import qwen3_jupyter\nqwen3_jupyter.stop()").result()
    assert shown == "nothing is using the model or a server: nothing to stop", "unquoted"
    ok(kernel, f"%qwen3 --{decode} --greedy --max-new-tokens 3 hi")  # free, and not stopped


def test_stop_ends_a_background_batch_between_batches_keeping_the_finished(
    kernel: Kernel,
) -> None:
    ok(kernel, "%qwen3 --max-new-tokens 2 load")
    ok(kernel, START_PAUSED_BATCH.replace('["one", "two", "three", "four"]', "['p'] * 8"))
    try:
        said = ok(kernel, "import qwen3_jupyter\nprint(qwen3_jupyter.stop())").stdout
        assert "asked a batch (generate_batch) in thread 'batcher' to stop" in said
    finally:
        ok(kernel, "resume.set(); background.join(120); del engine.generate_chunk")
    assert kernel.value("(out[0].report.interrupted, len(out[0]))") == (True, 4)
    for cell in ("%qwen3 --stop hi", "%qwen3 --stop --eager", "%qwen3 --stop --server http://x"):
        refused = kernel.run(cell)
        assert refused.status == "error"
        assert refused.stderr.strip() == (
            "UsageError: --stop goes alone: it asks the call using the model in another thread "
            "to stop"
        ), cell


def test_only_a_decoding_holder_is_asked_to_stop() -> None:
    """Loading, a warm-up or a cleanup has no step to stop at: stop says so, the busy message
    offers no --stop, and the flag is not left for the next call."""
    from qwen3_jupyter.model_use import ModelUse

    use = ModelUse()
    entered, leave = threading.Event(), threading.Event()

    def hold(activity: str) -> None:
        with use.hold(activity):
            entered.set()
            leave.wait(10)

    for activity, stoppable in (("loading tiny", False), ("a batch", True)):
        entered.clear()
        leave.clear()
        thread = threading.Thread(target=hold, args=(activity,), name="worker")
        thread.start()
        assert entered.wait(10)
        try:
            assert use.request_stop() == f"{activity} in thread 'worker'"
            assert use.stoppable is stoppable
            with pytest.raises(ModelBusy) as refused, use.hold("a generation"):
                pass
            assert ("%qwen3 --stop" in str(refused.value)) is stoppable
            use.check_stop()  # asked of the worker, not of this thread: nothing happens here
        finally:
            leave.set()
            thread.join(10)
    with use.hold("a generation"):
        use.check_stop()  # a stop asked of an earlier holder does not reach this one


# ----------------------------------------------------------------------------- callbacks

VARIED = GenerationOptions(greedy=True, think=False, max_new_tokens=16, ignore_eos=True)
NESTED = "a generation cannot start inside another one's on_text callback"


@pytest.fixture(scope="module")
def engines(model_cache: Path) -> Iterator[dict[str, LocalEngine]]:
    """Both in-kernel engines on `tiny`, weights scaled so greedy answers are varied. The fast
    one uncompiled: the same static cache and decode loop, and no compile in this process that
    test_fast_engine's compile counts would then find done already."""
    holder = ModelHolder()
    loaded = holder.get(ModelChoice("tiny", "cpu", "float32"))
    perturb(loaded.model)
    notices: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN3_JUPYTER_COMPILE", "0")
        fast = FastEngine(loaded, notify=notices.append)
    assert not fast.compile
    fast.notices = notices  # type: ignore[attr-defined]
    yield {"fast": fast, "eager": EagerEngine(loaded)}
    fast.close()
    holder.unload()


@pytest.mark.parametrize("decode", ["fast", "eager"])
def test_a_generation_started_from_a_running_ones_callback_is_refused_and_leaves_it_intact(
    engines: dict[str, LocalEngine], decode: str
) -> None:
    """Measured before the refusal: on the fast path the inner call decoded into the same
    static cache and the outer answer's tokens changed from the second on, without an error."""
    engine = engines[decode]
    reference = engine.generate("Hello", VARIED).token_ids
    assert len(set(reference)) > 5, "control: a varied answer, so a change would show"
    refusals: list[BaseException] = []

    def on_text(text: str) -> None:
        if not refusals:
            try:
                engine.generate("Tell me a long story. " * 5, VARIED)
            except ModelBusy as exc:
                refusals.append(exc)

    result = engine.generate("Hello", VARIED, on_text=on_text, stream_interval=0)
    assert [str(e).split(" (")[0] for e in refusals] == [NESTED]
    assert result.token_ids == reference and result.engine == decode
    assert engine.generate("Hello", VARIED).token_ids == reference  # the mark was given back


@pytest.mark.parametrize("decode", ["fast", "eager"])
def test_on_text_ends_with_the_whole_text(engines: dict[str, LocalEngine], decode: str) -> None:
    """`on_text` is paced (here once a minute: only the first token's call): the tokens after
    the last paced call never reached it, so a display built on it ended short of the answer."""
    engine = engines[decode]
    texts: list[str] = []
    result = engine.generate("Hello", VARIED, on_text=texts.append, stream_interval=60)
    whole = engine.loaded.tokenizer.decode(list(result.token_ids), skip_special_tokens=True)
    assert len(result.token_ids) > 5 and result.engine == decode
    assert texts[-1] == whole and len(texts) == 2, texts
    refused: list[bool] = []

    def nested(text: str) -> None:  # the last call too is inside the decode: refused
        try:
            engine.generate("Tell me a story.", VARIED)
        except ModelBusy:
            refused.append(True)
        else:
            refused.append(False)

    engine.generate("Hello", VARIED, on_text=nested, stream_interval=60)
    assert refused == [True, True]


@pytest.mark.parametrize("decode", ["fast", "eager"])
def test_an_error_in_the_callers_on_text_is_theirs_and_the_path_and_memory_stay(
    engines: dict[str, LocalEngine], decode: str
) -> None:
    """A typo in a streaming callback used to mark the fast path broken for the kernel (every
    later call decoded eagerly, ~6× slower on a GPU); it is the caller's error, raised as is."""
    engine = engines[decode]
    reference = engine.generate("Hello", VARIED).token_ids
    typo = NameError("name 'widgte' is not defined")

    def on_text(text: str) -> None:
        raise typo

    notices = list(getattr(engine, "notices", []))
    with pytest.raises(NameError) as raised:
        engine.generate("Hello", VARIED, on_text=on_text, stream_interval=0)
    assert raised.value is typo
    gc.collect()
    kept = [  # while the error (and its traceback) is still held, as IPython keeps the last one
        layer
        for layer in gc.get_objects()
        if type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None
    ]
    assert kept == [], "the error's traceback keeps the dynamic KV cache"
    assert getattr(engine, "notices", []) == notices, "a notice said the path failed"
    after = engine.generate("Hello", VARIED)
    assert after.engine == decode and after.token_ids == reference


def test_a_decode_mark_an_interrupt_left_behind_neither_refuses_nor_outlives_the_cell() -> None:
    use = HOLDER.use
    mark = use.decoding()

    def begin_and_leave() -> None:
        mark.__enter__()  # its function returns without __exit__, as such an interrupt leaves it

    begin_and_leave()
    # the marked block is gone from the stack, so it is no decode running now
    with use.decoding(), pytest.raises(ModelBusy, match=NESTED), use.decoding():
        pass
    begin_and_leave()
    use.release_leftover()  # the cell's end: the stale mark (and its frame) is dropped
    assert use._decoding is None


def test_a_stop_ends_a_threads_inference_block_not_only_its_running_chat(
    fresh_kernel: Kernel,
) -> None:
    """`%qwen3 --stop` stopped the running chat() of a loop in a thread, and the loop asked
    its next questions as if nothing had happened (in the main thread one interrupt ends the
    cell's later calls)."""
    k = fresh_kernel
    ok(k, "%load_ext qwen3_jupyter\nimport threading, time, qwen3_jupyter")
    ok(k, "%qwen3 --model tiny --max-new-tokens 1 load")
    ok(
        k,
        "asked, ended = [], {}\n"
        "def loop():\n"
        "    try:\n"
        "        with qwen3_jupyter.inference(max_new_tokens=3000, ignore_eos=True) as chat:\n"
        "            for i in range(4):\n"
        "                asked.append(chat(f'question {i}', think=False).stop_reason)\n"
        "    except KeyboardInterrupt as stop:\n"
        "        ended['why'] = str(stop)\n"
        "looper = threading.Thread(target=loop, name='looper'); looper.start()\n"
        "while qwen3_jupyter.session.HOLDER.use.user is None: time.sleep(0.05)",
    )
    stopped = ok(k, "%qwen3 --stop")
    assert "asked an inference() chat in thread 'looper' to stop" in stopped.stdout
    ok(k, "looper.join(60)")
    assert k.value("asked") == ["interrupted"]
    assert k.value("ended['why']").startswith("stopped by qwen3_jupyter.stop() (or %qwen3 --stop)")
