"""engines/fast.py and qwen3_step.py: the static-cache, compiled decode path, on the CPU.

The same code runs here as on a GPU, minus the CUDA graph: a static KV cache, the decode step
compiled by torch.compile (inductor's CPU backend), greedy tokens compared with transformers'
own `generate` token for token. The embedded `tiny` model's random weights collapse into one
repeated token, which would make "identical tokens" a weak check, so these tests scale its
weights up (the same weights for both paths) until every answer is a varied sequence.

GPU-only checks (CUDA graph capture, bf16 on the full-size model, NVML) are marked `gpu` at the
bottom and skip without CUDA.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qwen3_jupyter.engines import compile_setup, decode_mode
from qwen3_jupyter.engines.compile_setup import (
    THREADS_ENV,
    TUNE_ENV,
    compile_cache_dir,
    compiles_so_far,
    compiling,
    remember_compiled,
    tuning_enabled,
)
from qwen3_jupyter.engines.decode_shapes import batch_bucket, cache_bucket, sample_width
from qwen3_jupyter.engines.decode_steps import DecodeState
from qwen3_jupyter.engines.eager import EagerEngine
from qwen3_jupyter.engines.fast import FastEngine
from qwen3_jupyter.engines.qwen3_step import PLAIN_STEP
from qwen3_jupyter.generation import GenerationOOM, GenerationOptions
from qwen3_jupyter.models import LoadedModel, ModelChoice, ModelHolder
from tests.kernel import Kernel, ended_as_interrupted, ok
from tests.kernel_pool import KernelPool

GREEDY = GenerationOptions(greedy=True, think=False, max_new_tokens=24, ignore_eos=True)
PERTURB = """
import torch
_g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for _p in {model}.parameters():
        if _p.dim() > 1:
            _p.copy_(torch.randn(_p.shape, generator=_g) * 0.3)
"""


def perturb(model: Any) -> None:
    """Scale the tiny model's weights up so greedy answers are varied sequences."""
    exec(PERTURB.format(model="model"), {"model": model})


def tiny_variant(loaded: LoadedModel, name: str, **config: Any) -> LoadedModel:
    """`tiny` with `config` changed (e.g. a width no other test compiles, so torch.compile
    builds its graphs anew here), perturbed like `loaded`, with its tokenizer, on the CPU."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from qwen3_jupyter.embedded import EMBEDDED

    model = Qwen3ForCausalLM(Qwen3Config(**{**EMBEDDED["tiny"].config, **config})).eval()
    perturb(model)
    return LoadedModel(name, "", model, loaded.tokenizer, "cpu", "float32", True)


@pytest.fixture(scope="module")
def loaded(model_cache: Path) -> Iterator[LoadedModel]:
    holder = ModelHolder()
    model = holder.get(ModelChoice("tiny", "cpu", "float32"))
    perturb(model.model)
    yield model
    holder.unload()


@pytest.fixture(scope="module")
def fast(loaded: LoadedModel) -> Iterator[FastEngine]:
    notices: list[str] = []
    engine = FastEngine(loaded, notify=notices.append)
    engine.notices = notices  # type: ignore[attr-defined]
    yield engine
    engine.close()


# ----------------------------------------------------------------------------- shapes


def test_buckets_round_up_so_prompt_lengths_share_shapes() -> None:
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]
    assert cache_bucket(10) == cache_bucket(2_500) == 4096
    assert cache_bucket(4097) == 8192
    assert cache_bucket(100, minimum=1000) == 1024
    # a batch's floor is the single call's divided by its rows, not below 512
    floors = {b: cache_bucket(10, batch=b) for b in (1, 2, 3, 4, 8, 16, 64)}
    assert floors == {1: 4096, 2: 2048, 3: 1024, 4: 1024, 8: 512, 16: 512, 64: 512}
    assert cache_bucket(1500, batch=16) == 2048, "a long prompt still gets the room it needs"
    assert cache_bucket(10, minimum=64, batch=4) == 64, "a lower floor is not raised"
    assert sample_width(GenerationOptions(greedy=True), 151_936) == 0
    assert sample_width(GenerationOptions(), 151_936) == 64  # Qwen3's top-k 20 fits
    assert sample_width(GenerationOptions(top_k=100), 151_936) == 128


def test_a_step_the_cache_holds_is_loaded_with_one_compile_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Inductor's worker pool (a process per core, each importing torch) is for compiling: a
    step compiled before is loaded in-process; a new one, or the user's own thread count,
    keeps the pool."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "compile"))
    monkeypatch.delenv(THREADS_ENV, raising=False)
    with inductor_config.patch(compile_threads=16):
        _one_thread_where_cached(monkeypatch)


def _one_thread_where_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config

    with compiling("batch 1 × cache 4096 · tiny") as cached:
        assert (cached, inductor_config.compile_threads) == (False, 16)
    remember_compiled("batch 1 × cache 4096 · tiny")
    with compiling("batch 1 × cache 4096 · tiny") as cached:
        assert (cached, inductor_config.compile_threads) == (True, 1)
    assert inductor_config.compile_threads == 16
    with compiling("batch 16 × cache 4096 · tiny") as cached:
        assert (cached, inductor_config.compile_threads) == (False, 16)
    monkeypatch.setenv(THREADS_ENV, "4")
    with compiling("batch 1 × cache 4096 · tiny") as cached:
        assert (cached, inductor_config.compile_threads) == (True, 16)
    monkeypatch.delenv(THREADS_ENV)
    # without inductor's disk cache a mark would promise a load that is really a compile
    with inductor_config.patch(fx_graph_cache=False):
        remember_compiled("batch 2 × cache 4096 · tiny")
        with compiling("batch 1 × cache 4096 · tiny") as cached:
            assert not cached
    with compiling("batch 2 × cache 4096 · tiny") as cached:
        assert not cached
    # a new Triton makes inductor's cache keys new: the old mark must not claim the step
    monkeypatch.setattr(compile_setup, "_triton_version", lambda: "99.0")
    with compiling("batch 1 × cache 4096 · tiny") as cached:
        assert (cached, inductor_config.compile_threads) == (False, 16)


def test_an_unwritable_cache_folder_leaves_inductor_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The compile cache goes under the project's cache folder; where that cannot be created
    (read-only, or a file in the way) compiling still works, with inductor's own folder."""
    import qwen3_jupyter.embedded as embedded

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(embedded, "cache_root", lambda: tmp_path / "cache")
    assert compile_cache_dir() == str(tmp_path / "cache" / "torch-compile")
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ, "set only while the step compiles"
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(embedded, "cache_root", lambda: tmp_path / "a-file")
    chosen = compile_cache_dir()  # no NotADirectoryError
    assert chosen and "a-file" not in chosen


def test_decode_mode_is_fast_on_cuda_only_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWEN3_JUPYTER_DECODE", raising=False)
    assert decode_mode(None, None, "cuda") == "fast"
    assert decode_mode(None, None, "cpu") == "eager"
    assert decode_mode("eager", None, "cuda") == "eager"
    assert decode_mode(None, "fast", "cpu") == "fast"
    monkeypatch.setenv("QWEN3_JUPYTER_DECODE", "eager")
    assert decode_mode(None, "fast", "cuda") == "eager"
    from qwen3_jupyter.engines import EngineError

    with pytest.raises(
        EngineError, match=r"^decode=.quick. is not a decode mode: one of auto, fast, eager$"
    ):
        decode_mode("quick", None, "cpu")


# ----------------------------------------------------------------------------- same tokens


PROMPTS = ["Hello", "Why is the sky blue? " * 3, "Tell me a long story about a kernel. " * 25]


def test_greedy_tokens_are_identical_to_generate(fast: FastEngine, loaded: LoadedModel) -> None:
    eager = EagerEngine(loaded)
    for prompt in PROMPTS:
        reference = eager.generate(prompt, GREEDY)
        result = fast.generate(prompt, GREEDY)
        assert len(set(reference.token_ids)) > 5, "control: the answer is a varied sequence"
        assert result.token_ids == reference.token_ids, prompt[:40]
        assert result.engine == "fast" and result.completion_tokens == 24
        assert "decode cache (1×4096)" in result.kept_memory
    assert fast.compile, "the step compiled on this CPU (else the fallback would be tested)"
    assert fast.compiles >= 1


def test_tuning_is_opt_in_reaches_inductor_and_keys_its_step_apart(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """$QWEN3_JUPYTER_TUNE=1 compiles with inductor's kernel tuning (it tunes Triton kernels: on
    the CPU the step compiles and runs as the plain one does). Inductor keys its on-disk cache
    by its options, so in an empty cache the tuned step must miss where the plain one was just
    written (had the option not reached it, the tuned step would reuse the plain one). Same
    greedy tokens; a step key of its own, so the plain step's cache mark never puts a tuned
    compile on one thread."""
    from torch._dynamo.utils import counters

    def misses() -> int:
        return int(counters["inductor"]["fxgraph_cache_miss"])

    for value, expected in (("1", True), ("yes", True), ("0", False), ("off", False), ("", False)):
        monkeypatch.setenv(TUNE_ENV, value)
        assert tuning_enabled() is expected, value
    # A width no other test compiles: torch.compile reuses a function's compiled code for any
    # wrapper with equal settings, so a shape the fixture's engine compiled would never reach
    # inductor here (and a tuned wrapper that lost its options would reuse the plain code).
    narrow = tiny_variant(loaded, "tiny, width 40", num_hidden_layers=2, hidden_size=40)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(TUNE_ENV)
    reference = EagerEngine(narrow).generate(PROMPTS[1], GREEDY).token_ids
    plain = FastEngine(narrow)
    monkeypatch.setenv(TUNE_ENV, "1")
    tuned = FastEngine(narrow)
    try:
        assert not plain.tune and "(compiled, static cache)" in plain.describe()
        assert tuned.tune and "(compiled, tuned, static cache)" in tuned.describe()
        shape = "batch 1 × cache 4096"
        assert tuned._step_key(shape) == plain._step_key(shape) + " · tuned"
        before = misses()
        assert plain.generate(PROMPTS[1], GREEDY).token_ids == reference
        written = misses()
        assert written > before, "control: the plain step compiled into the empty cache"
        assert tuned.generate(PROMPTS[1], GREEDY).token_ids == reference
        assert misses() - written == written - before, "the tuned step reused the plain one"
        assert plain.compile and tuned.compile
    finally:
        tuned.close()
        plain.close()


def test_greedy_batches_match_generate_and_single_calls(
    fast: FastEngine, loaded: LoadedModel
) -> None:
    options = GenerationOptions(greedy=True, think=False, max_new_tokens=12)
    prompts = ["a", "bb bb", "ccc ccc ccc"]  # 3 rows: the 4-row shape with a repeated row
    fast.generate("a", options)  # the batch-1 shape exists (whatever ran before)
    batch = fast.generate_batch(prompts, options, batch_size=4, progress=False)
    eager_batch = EagerEngine(loaded).generate_batch(prompts, options, batch_size=4, progress=False)
    singles = [EagerEngine(loaded).generate(p, options) for p in prompts]
    assert [r.prompt for r in batch] == prompts
    assert [r.token_ids for r in batch] == [r.token_ids for r in eager_batch]
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    assert "4×1024" in batch[0].kept_memory, "a batch's cache floor is 4,096 tokens / its rows"
    assert [k.label for k in fast.kept_memory()] == ["decode cache (1×4096)"], (
        "after a batch only the batch-1 cache is kept"
    )


def test_end_of_sequence_stops_a_row_like_generate(fast: FastEngine, loaded: LoadedModel) -> None:
    """Without --ignore-eos both paths stop at the same end-of-sequence token (or not at all)."""
    options = GenerationOptions(greedy=True, think=False, max_new_tokens=40)
    for prompt in PROMPTS[:2]:
        reference = EagerEngine(loaded).generate(prompt, options)
        result = fast.generate(prompt, options)
        assert result.token_ids == reference.token_ids
        assert result.stop_reason == reference.stop_reason


def test_a_seed_gives_the_same_sampled_answer(fast: FastEngine) -> None:
    options = GenerationOptions(think=True, max_new_tokens=16, seed=3, ignore_eos=True)
    first, second = fast.generate("Hi", options), fast.generate("Hi", options)
    other = fast.generate("Hi", GenerationOptions(think=True, max_new_tokens=16, seed=4))
    assert first.token_ids == second.token_ids
    assert other.token_ids != first.token_ids, "control: another seed samples otherwise"


def test_a_wide_sampler_draws_the_same_under_a_bfloat16_default_dtype(
    fast: FastEngine, loaded: LoadedModel
) -> None:
    """A top-k wider than the default sampler gets noise of its own: made under a user's
    `torch.set_default_dtype(torch.bfloat16)` it was bf16, its clamp below 1 rounded to 1 and
    that token won every draw."""
    import torch

    options = GenerationOptions(think=True, max_new_tokens=16, seed=5, top_k=100, ignore_eos=True)
    expected = fast.generate("Hi", options).token_ids
    engine = FastEngine(loaded, notify=lambda _: None)
    torch.set_default_dtype(torch.bfloat16)
    try:
        drawn = engine.generate("Hi", options).token_ids
    finally:
        torch.set_default_dtype(torch.float32)
        engine.close()
    assert drawn == expected


def test_top_k_one_samples_the_greedy_token(fast: FastEngine) -> None:
    """Sampling restricted to the best candidate is greedy: checks the sampler's top-k mask."""
    sampled = fast.generate(
        "Hello", GenerationOptions(think=False, max_new_tokens=24, top_k=1, ignore_eos=True)
    )
    assert sampled.token_ids == fast.generate("Hello", GREEDY).token_ids


def test_uncompiled_static_path_gives_the_same_tokens(
    loaded: LoadedModel, fast: FastEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWEN3_JUPYTER_COMPILE", "0")
    plain = FastEngine(loaded)
    assert not plain.compile
    try:
        assert (
            plain.generate(PROMPTS[1], GREEDY).token_ids
            == fast.generate(PROMPTS[1], GREEDY).token_ids
        )
        assert plain.compiles == 0
    finally:
        plain.close()


def test_the_cache_leaves_room_for_the_steps_that_build_a_shape(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiling and capturing run a few steps before the call's own, writing cache slots just
    past the prompt: a prompt that with its new tokens fills a bucket exactly must get the next
    bucket (on CUDA an index past the cache's end is a device-side assert that ends the
    process's CUDA context; on the CPU it would only be an IndexError)."""
    from qwen3_jupyter.engines.fast import REHEARSAL_STEPS
    from qwen3_jupyter.generation import prompt_text

    monkeypatch.setenv("QWEN3_JUPYTER_CACHE_TOKENS", "64")
    monkeypatch.setenv("QWEN3_JUPYTER_COMPILE", "0")
    text = prompt_text(loaded.tokenizer, "Hello", GREEDY)
    width = len(loaded.tokenizer(text)["input_ids"])
    options = GenerationOptions(
        greedy=True, think=False, max_new_tokens=64 - width, ignore_eos=True
    )
    assert options.max_new_tokens >= 2 and REHEARSAL_STEPS >= 1
    engine = FastEngine(loaded)
    try:
        result = engine.generate("Hello", options)
        assert list(engine.states) == [(1, 128)], "64 slots leave no room for the rehearsal"
        assert len(result.token_ids) == options.max_new_tokens
        assert not engine.broken
    finally:
        engine.close()


def test_one_compiled_layer_serves_every_layer_and_sampling_compiles_only_the_head(
    loaded: LoadedModel,
) -> None:
    """Compiling is per part, not per step: embedding, one decoder layer (whatever the layer
    count: every layer runs the same graph on its own weights) and head. Tracing 28 unrolled
    layers is what made the H100's first call slow (32 s cold, 11 s from the disk cache)."""
    # a width no other test compiles, so each part's graph is new here
    six = tiny_variant(loaded, "tiny, 6 layers", num_hidden_layers=6, hidden_size=48)
    engine = FastEngine(six)
    try:
        before = compiles_so_far()
        greedy = engine.generate("Hello", GREEDY)
        assert list(engine.states) == [(1, 4096)] and engine.compile and not engine.broken
        assert compiles_so_far() - before == 3, "embedding, one layer for all 6, head"
        assert greedy.token_ids == EagerEngine(six).generate("Hello", GREEDY).token_ids
        before = compiles_so_far()
        engine.generate("Hello", GenerationOptions(think=False, max_new_tokens=8, seed=1))
        assert compiles_so_far() - before == 1, "sampling compiles its head, not the layers"
    finally:
        engine.close()


# ----------------------------------------------------------------------------- shapes, memory


def test_no_recompile_across_prompt_lengths(fast: FastEngine, loaded: LoadedModel) -> None:
    tokenizer = loaded.tokenizer
    options = GenerationOptions(greedy=True, think=False, max_new_tokens=4, ignore_eos=True)
    fast.generate("warm", options)  # the shape exists (compiled by earlier tests or now)
    # Else no counter could move: with compiling off or broken, this test would check nothing.
    assert fast.compile and not fast.broken and fast.compiles >= 1
    before_engine, before_process = fast.compiles, compiles_so_far()
    lengths = []
    for words in (5, 40, 180, 900, 1_900):
        result = fast.generate("word " * words, options)
        lengths.append(result.prompt_tokens)
        assert result.completion_tokens == 4
    assert lengths[0] <= 20 and lengths[-1] >= 1_900, lengths
    assert tokenizer is not None
    assert fast.compiles == before_engine, "a new prompt length compiled the step again"
    assert compiles_so_far() == before_process


def test_memory_budget_is_an_out_of_memory_error_and_batches_back_off(
    fast: FastEngine, loaded: LoadedModel
) -> None:
    options = GenerationOptions(greedy=True, think=False, max_new_tokens=8, ignore_eos=True)
    before = fast.generate("hi", options).token_ids
    compiled = compiles_so_far()
    with pytest.raises(GenerationOOM, match="over the memory budget") as info:
        fast.generate("hi", options, memory_budget=1000)
    assert str(info.value).endswith(
        "raise --memory-budget, or decode with --eager (the fast path needs a 2.6 MiB decode "
        "cache for 1×4096 tokens; --eager's grows with the answer)"
    ), "a lower --max-new-tokens would not shrink the fast path's cache: not the advice"
    assert fast.generate("hi", options).token_ids == before, "the cache is usable after an OOM"
    assert compiles_so_far() == compiled and not fast.broken
    one_row = fast._estimate(1, cache_bucket(1), 151_936)
    two_rows = fast._estimate(2, cache_bucket(1, batch=2), 151_936)
    results = fast.generate_batch(
        ["a", "b", "c", "d"],
        options,
        batch_size=4,
        memory_budget=(one_row + two_rows) // 2,
        progress=False,
    )
    assert [b.batch_size for b in results.report.back_offs] == [4, 2]
    assert results.report.held_batch_size == 1
    assert [r.token_ids for r in results] == [
        EagerEngine(loaded).generate(p, options).token_ids for p in "abcd"
    ]


def test_a_batch_shape_that_ran_out_of_memory_is_given_back_before_smaller_chunks_run(
    fast: FastEngine, loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU a batch can run out inside its prefill, its cache already allocated: that cache
    stayed kept while the back-off's smaller chunks decoded, crowding them out. The failure is
    the allocator's own error, raised where a real one is (the prefill)."""
    import torch

    options = GenerationOptions(greedy=True, think=False, max_new_tokens=4, ignore_eos=True)
    fast.generate("hi", options)  # the single calls' cache exists, as in a notebook
    prefill = fast._prefill
    held_at_prefill: list[list[tuple[int, int]]] = []

    def prefill_that_runs_out_at_two_rows(state: Any, *args: Any) -> Any:
        held_at_prefill.append(list(fast.states))
        if state.batch == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return prefill(state, *args)

    from qwen3_jupyter.engines import fast as fast_module

    release = fast_module.release_after_generation
    alive_at_release: list[bool] = []

    def release_watched(device: str, memory_at_end: int | None) -> int | None:
        batch = [s for s in gc.get_objects() if type(s) is DecodeState and s.batch == 2]
        alive_at_release.append(bool(batch))
        return release(device, memory_at_end)

    monkeypatch.setattr(fast, "_prefill", prefill_that_runs_out_at_two_rows)
    monkeypatch.setattr(fast_module, "release_after_generation", release_watched)
    results = fast.generate_batch(["a", "b"], options, batch_size=2, progress=False)
    assert [b.batch_size for b in results.report.back_offs] == [2]
    assert held_at_prefill[0] == [(1, 4096), (2, 2048)], "the batch's cache, then its OOM"
    assert held_at_prefill[1:] == [[(1, 4096)], [(1, 4096)]], "given back before the rows"
    # ... and gone when its memory is released: the error's traceback held the failed run's
    # frame (and the cache) while generate_chunk released inside its except block
    assert alive_at_release and not any(alive_at_release), alive_at_release
    assert [r.token_ids for r in results] == [
        EagerEngine(loaded).generate(p, options).token_ids for p in "ab"
    ]


def test_the_budget_estimate_covers_what_a_shape_allocates(
    fast: FastEngine, loaded: LoadedModel
) -> None:
    """`--memory-budget` is judged on `_estimate`; the test above derives its budget from that
    estimate too, so here it is compared with what each shape's buffers really hold (the
    step's own `allocate`, on the meta device) plus one step's float32 logits."""
    vocab = int(loaded.model.lm_head.weight.shape[0])
    for batch in (1, 2, 4, 16):
        length = cache_bucket(1, batch=batch)
        held = fast._held_bytes(batch, length) + batch * vocab * 4
        assert fast._estimate(batch, length, vocab) >= held, (batch, length)


def test_kept_memory_is_the_cache_and_close_gives_it_back(loaded: LoadedModel) -> None:
    from qwen3_jupyter.memory import live_tensor_bytes

    engine = FastEngine(loaded)
    before = live_tensor_bytes().get("cpu", 0)
    engine.generate("hi", GenerationOptions(greedy=True, think=False, max_new_tokens=4))
    (kept,) = engine.kept_memory()
    held = live_tensor_bytes().get("cpu", 0) - before
    (state,) = engine.states.values()
    assert state.buffers.cache_bytes == engine._estimate(1, 4096, 0)  # layers × K/V × tokens
    assert kept.nbytes == state.held_bytes == held  # the cache and its state: every byte kept
    del state
    engine.close()
    assert engine.kept_memory() == ()
    assert live_tensor_bytes().get("cpu", 0) - before <= 0


# ----------------------------------------------------------------------------- real kernel

LIVE_BYTES = "qwen3_jupyter.memory.live_tensor_bytes().get('cpu', 0)"


@pytest.fixture(scope="module")
def fk(kernel_env: dict[str, str]) -> Iterator[Kernel]:
    """A kernel whose model is the weight-scaled tiny, decoding through --fast."""
    kernel = Kernel({**kernel_env, "QWEN3_JUPYTER_DECODE": "fast"})
    try:
        ok(kernel, "%load_ext qwen3_jupyter")
        ok(kernel, "import qwen3_jupyter, weakref\nfrom qwen3_jupyter.session import SESSION")
        ok(kernel, "%qwen3 --eager --greedy --max-new-tokens 2 load")
        ok(kernel, PERTURB.format(model="SESSION.loaded.model"))
        yield kernel
    finally:
        kernel.shutdown()


def test_first_fast_call_says_it_compiles_then_streams(fk: Kernel) -> None:
    ex = ok(fk, "%qwen3 --greedy --no-think --ignore-eos --max-new-tokens 30 Hello there")
    shown = " ".join(ex.texts())
    assert "compiling the decode step for batch 1 × cache 4096" in shown
    # the time it took: compiled here, or loaded from the disk cache when an earlier test (or a
    # torch release whose cache keys match across processes) already compiled this shape
    took = r"(compiled the decode step|loaded the compiled decode step from the cache) for "
    assert re.search(took + r"batch 1 × cache 4096 in \d+\.\d s", ex.stdout), ex.stdout
    assert "(fast)" in ex.stdout and "first token" in ex.stdout
    answer_updates = [  # status lines ("*compiling …*") are displays of their own
        m
        for m in ex.of_type("update_display_data")
        if m["content"]["data"].get("text/markdown", "*").strip()
        and not m["content"]["data"].get("text/markdown", "*").startswith("*")
    ]
    assert len({m["content"]["transient"]["display_id"] for m in answer_updates}) == 1
    streamed = {m["content"]["data"]["text/markdown"] for m in answer_updates}
    assert len(streamed) >= 2, "the answer was shown at once, not streamed"
    assert "decode cache (1×4096) 2.6 MiB on cpu, kept for speed" in ex.stdout
    assert fk.value("(_qwen3.engine, len(_qwen3.token_ids))") == ("fast", 30)
    assert fk.value("len(Out)") == 0


def test_fast_and_eager_give_the_same_tokens_in_a_kernel(fk: Kernel) -> None:
    cell = "%qwen3 {flag} --greedy --no-think --ignore-eos --max-new-tokens 30 Why is it so?"
    ok(fk, cell.format(flag="--fast"))
    fast = fk.value("_qwen3.token_ids")
    ex = ok(fk, cell.format(flag="--eager"))
    # switching to eager gives the fast path's memory back, and says so before answering
    assert "gave back decode cache (1×4096) 2.6 MiB on cpu · " in ex.stdout
    assert "the next call without --eager builds it again" in ex.stdout
    assert fk.value("SESSION.kept_memory()") == ()
    assert fk.value("_qwen3.engine") == "eager"
    assert fk.value("_qwen3.token_ids") == fast
    assert len(set(fast)) > 5


def test_where_calls_decode_eagerly_by_default_only_a_fast_call_rebuilds(fk: Kernel) -> None:
    """On the CPU (`auto`: eager) the give-back said "the next call without --eager builds it
    again"; the next plain call decoded eagerly and built nothing. It also counted the heap
    slack of the first call's compile (~90 MiB) as what a 2.6 MiB cache gave back."""
    ok(fk, "import os\nos.environ['QWEN3_JUPYTER_DECODE'] = 'auto'")
    try:
        ok(fk, "%qwen3 --fast --greedy --no-think --max-new-tokens 4 hi")
        gave = ok(fk, "%qwen3 --eager").stdout
        assert "; the next --fast call builds it again" in gave, gave
        freed = re.search(r"\(freed ([\d.]+) MiB\)", gave)
        assert freed is not None and float(freed.group(1)) < 20, gave
        ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 4 hi")
        assert fk.value("(_qwen3.engine, SESSION.kept_memory())") == ("eager", ())
    finally:
        ok(fk, "os.environ['QWEN3_JUPYTER_DECODE'] = 'fast'")


def test_chat_and_thinking_work_on_the_fast_path(fk: Kernel) -> None:
    ok(fk, "%qwen3 --reset")
    # (a turn whose answer is empty, as random weights that never close </think> give, is not
    # kept: the first turn answers without thinking)
    ok(fk, "%qwen3 --chat --no-think --max-new-tokens 24 --seed 2 Name a prime number.")
    first = fk.value("(_qwen3.engine, _qwen3.prompt_tokens)")
    ok(fk, "%qwen3 --chat --max-new-tokens 24 --seed 3 And another one?")
    second = fk.value("(_qwen3.engine, _qwen3.prompt_tokens, _qwen3.think, bool(_qwen3.answer))")
    assert first[0] == second[0] == "fast" and second[2] is True
    assert second[1] > first[1] + 5, "the second turn's prompt carries the first turn"
    assert fk.value("len(SESSION.conversation.messages)") == 2 + 2 * second[3]
    ok(fk, "%qwen3 --reset")


def test_ten_calls_retain_nothing_beyond_the_decode_cache(fk: Kernel) -> None:
    cell = "%qwen3 --greedy --no-think --ignore-eos --max-new-tokens 16 Count to ten"
    ok(fk, cell)
    after_first = fk.value(LIVE_BYTES)
    kept = fk.value("sum(k.nbytes for k in SESSION.kept_memory())")
    state = "SESSION.engines['fast'].states[(1, 4096)]"
    assert fk.value(f"{state}.buffers.cache_bytes") == 2 * 2**20
    assert kept == fk.value(f"{state}.held_bytes")  # the cache + its per-row state and bias
    figures = []
    for _ in range(10):
        ok(fk, cell)
        figures.append(fk.value(LIVE_BYTES))
    assert figures == [after_first] * 10


def test_clean_verbose_names_the_decode_cache(fk: Kernel) -> None:
    ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 4 hi")
    ex = ok(fk, "%qwen3_clean --verbose")
    assert "kept on purpose: decode cache (1×4096) 2.6 MiB on cpu, kept for speed" in ex.stdout
    assert "fast engine (fast) decode cache: " in ex.stdout
    assert "kept for speed: %qwen3 --eager or --unload gives it back" in ex.stdout
    assert "not reachable from a name" not in ex.stdout


def test_interrupt_mid_decode_keeps_the_partial_answer_and_the_cache(fk: Kernel) -> None:
    cell = "%qwen3 --greedy --no-think --ignore-eos --max-new-tokens {n} Talk about kernels"
    ok(fk, cell.format(n=20))
    reference = fk.value("_qwen3.token_ids")
    graphs = "__import__('qwen3_jupyter.engines.compile_setup', fromlist=['x']).compiles_so_far()"
    compiled = fk.value(graphs)
    msg_id = fk.start(cell.format(n=3_500))
    deadline, updates = time.monotonic() + 60, 0
    while time.monotonic() < deadline and updates < 2:
        msg = fk.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == (
            "update_display_data"
        ):
            updates += 1
    assert updates >= 2, "the answer never started streaming"
    interrupted_at = time.monotonic()
    fk.interrupt()
    ex = fk.collect(msg_id, timeout=30)
    took = time.monotonic() - interrupted_at
    if took >= 5:
        compiled = fk.value("SESSION.engines['fast'].compile_seconds")
        pytest.fail(f"the interrupt took {took:.1f} s; compiles {compiled}; {ex.stdout[-800:]}")
    assert ended_as_interrupted(ex) and "interrupted: partial answer kept" in ex.stdout
    assert fk.value(graphs) == compiled, "the interrupt made torch.compile compile again"
    stop, tokens = fk.value("(_qwen3.stop_reason, _qwen3.completion_tokens)")
    assert stop == "interrupted" and 0 < tokens < 3_500
    kept = fk.value("_qwen3.token_ids[:20]")  # fewer where the interrupt came early (busy CPU)
    assert kept == reference[: len(kept)]
    ok(fk, cell.format(n=20))
    assert fk.value("_qwen3.token_ids") == reference, "the cache is usable after an interrupt"


def test_eager_alone_gives_the_decode_cache_back(fk: Kernel) -> None:
    ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 4 hi")
    before = fk.value(LIVE_BYTES)
    ex = ok(fk, "%qwen3 --eager")
    assert "gave back decode cache (1×4096) 2.6 MiB on cpu · " in ex.stdout
    assert fk.value("SESSION.kept_memory()") == ()
    assert before - fk.value(LIVE_BYTES) >= 2 * 2**20
    assert "nothing to give back" in ok(fk, "%qwen3 --eager").stdout


def test_warmup_compiles_ahead_so_the_next_call_compiles_nothing(fk: Kernel) -> None:
    ex = ok(fk, "%qwen3 --warmup")
    lines = ex.said.strip().splitlines()  # (in the display its "compiling…" line used)
    # what each shape did first, then the sum: how its graphs came (compiled, loaded, neither)
    assert re.fullmatch(
        r"\[qwen3\] fast decode ready for batch × cache 1×4096 \((\d+ graphs?( compiled|"
        r" loaded from the compile cache|, some loaded from the compile cache, the rest compiled)"
        r"|nothing new to compile), \d+\.\d s\)",
        lines[-1],
    ), ex.said
    ok(fk, "compiled = SESSION.engines['fast'].compiles")
    ex = ok(fk, "%qwen3 --max-new-tokens 4 --seed 1 sampled now")
    assert "compiled the decode step" not in ex.stdout
    assert fk.value("SESSION.engines['fast'].compiles == compiled")


def test_warmup_with_a_batch_size_builds_that_step_and_keeps_only_the_single_cache(
    fk: Kernel,
) -> None:
    ex = ok(fk, "%qwen3 --warmup --batch-size 4")
    assert "fast decode ready for batch × cache 1×4096, 4×1024 (" in ex.said, ex.said
    assert "batch 4: cache given back, the compiled step kept for generate_batch" in ex.said
    assert fk.value("[list(key) for key in SESSION.engines['fast'].states]") == [[1, 4096]]
    ok(fk, "compiled = SESSION.engines['fast'].compiles")
    ex = ok(
        fk,
        "rs = qwen3_jupyter.generate_batch(['a', 'b', 'c', 'd'], batch_size=4, greedy=True, "
        "max_new_tokens=3)",
    )
    assert "decode step" not in ex.said, ex.said  # nothing compiled or loaded: warmed up
    assert fk.value("SESSION.engines['fast'].compiles == compiled")
    assert fk.value("[len(r.token_ids) for r in rs]") == [3, 3, 3, 3]


def test_a_warmup_for_answers_near_a_bucket_edge_builds_both_prompt_ends(fk: Kernel) -> None:
    """Sized for a 64-token prompt only, a warm-up for 4,030 new tokens built 1×8192, and a
    9-token call then built 1×4096; one for more tokens than the model has positions built a
    cache no call could use (1×131072, 14 GiB at the 1.7B shape)."""
    ex = ok(fk, "%qwen3 --warmup --max-new-tokens 4030")
    assert "fast decode ready for batch × cache 1×8192/4096 (" in ex.said, ex.said
    ok(fk, "compiled = SESSION.engines['fast'].compiles")
    ex = ok(fk, "%qwen3 --greedy --no-think --ignore-eos --max-new-tokens 4030 hi")
    assert "decode step" not in ex.said, ex.said
    assert fk.value("SESSION.engines['fast'].compiles == compiled")
    refused = fk.run("%qwen3 --warmup --max-new-tokens 99999")
    assert refused.status == "error", refused.said
    assert refused.stderr.strip() == (
        "UsageError: --warmup --max-new-tokens 99,999: even a prompt of 8 tokens with that many "
        "exceeds the 4,096 positions of tiny: give it what your calls ask"
    ), refused.stderr
    assert fk.value("[list(key) for key in SESSION.engines['fast'].states]") == [[1, 4096]]


WARMUP_UNDER_A_MEMORY_LIMIT = """
import resource, psutil
_soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + 2**30, _hard))
try:
    get_ipython().run_line_magic("qwen3", "--warmup --batch-size 4096 --max-new-tokens 3000")
finally:
    resource.setrlimit(resource.RLIMIT_AS, (_soft, _hard))
"""
"""A warm-up whose batch cache (8 GiB for tiny at 4096×4096) cannot be allocated: a real
allocation failure, under an address-space limit 1 GiB above what the kernel maps now."""


def test_a_warmup_out_of_memory_is_one_line_and_keeps_the_single_shape(fk: Kernel) -> None:
    """An out-of-memory while a warm-up built its cache ended in a traceback (`%qwen3
    --warmup --batch-size 64` of a large model on a small GPU); the calls' own back-off never
    saw it."""
    import resource

    if resource.getrlimit(resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY:
        pytest.skip("the address-space limit cannot be raised back here")
    ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 2 hi")
    ok(fk, "keep_me = [41]")
    refused = fk.run(WARMUP_UNDER_A_MEMORY_LIMIT)
    assert refused.status == "error", refused.said
    assert refused.stderr.strip().startswith(
        "UsageError: --warmup ran out of memory building the 8.0 GiB decode cache for batch × "
        "cache 4096×4,096 (host memory: could not allocate 2.0 GiB more): warm up a smaller "
        "--batch-size or --max-new-tokens"
    ), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert fk.value("resource.getrlimit(resource.RLIMIT_AS) == (_soft, _hard)")
    assert fk.value("keep_me") == [41]
    assert fk.value("[list(key) for key in SESSION.engines['fast'].states]") == [[1, 4096]]
    ok(fk, "%qwen3 --greedy --no-think --ignore-eos --max-new-tokens 3 hi")
    assert fk.value("(_qwen3.engine, _qwen3.completion_tokens)") == ("fast", 3)


def test_a_warmup_builds_the_shape_a_default_batch_call_uses(fk: Kernel) -> None:
    """From 8 rows a batch's cache floor is 512 tokens: sized for no answer, the warm-up built
    8×512, and a call asking the default 512 new tokens (8×1024) compiled everything again."""
    ex = ok(fk, "%qwen3 --warmup --batch-size 8")
    assert "fast decode ready for batch × cache 1×4096, 8×1024 (" in ex.said, ex.said
    ok(fk, "compiled = SESSION.engines['fast'].compiles")
    ex = ok(fk, "rs = qwen3_jupyter.generate_batch(['a'] * 8, batch_size=8, greedy=True)")
    assert "decode step" not in ex.said, ex.said
    assert fk.value("SESSION.engines['fast'].compiles == compiled")


def test_a_model_switch_lets_go_of_the_old_weights_before_the_new_ones_load(
    fresh_kernel: Kernel,
) -> None:
    """The fast path's steps close over the model: a switch after a fast call kept the old
    weights alive while the new ones loaded (twice the memory: on a GPU, out of memory). And
    an `inference()` block whose model was switched away says so in one line."""
    k = fresh_kernel
    ok(k, "%load_ext qwen3_jupyter\nimport os\nos.environ['QWEN3_JUPYTER_COMPILE'] = '0'")
    ok(k, "%qwen3 --model tiny --fast --greedy --max-new-tokens 2 hi")
    ok(
        k,
        "import gc, weakref, qwen3_jupyter\nfrom qwen3_jupyter import models\n"
        "from qwen3_jupyter.session import SESSION\n"
        "old, alive, load = weakref.ref(SESSION.loaded.model), [], models._load\n"
        "def watched(*args, **kwargs):\n"
        "    gc.collect()\n"
        "    alive.append(old() is not None)\n"
        "    return load(*args, **kwargs)\n"
        "models._load = watched",
    )
    ok(k, "%qwen3 --model tiny --dtype bfloat16 --fast --greedy --max-new-tokens 2 hi")
    assert k.value("alive") == [False], "the old weights were gone before the new load"
    assert k.value("_qwen3.engine") == "fast"
    ex = k.run(
        "with qwen3_jupyter.inference(model='tiny', greedy=True, max_new_tokens=2) as chat:\n"
        "    chat('hi')\n"
        "    qwen3_jupyter.generate_batch(['x'], model='tiny', dtype='float32', progress=False)\n"
        "    chat('again')"
    )
    assert ex.status == "error" and ex.reply["ename"] == "EngineError", ex.reply
    assert ex.reply["evalue"] == (  # was AttributeError: 'NoneType' … 'apply_chat_template'
        "tiny was unloaded or replaced since this was started: ask again (a `with "
        "inference()` block: open a new one)"
    )


def test_a_wider_top_k_names_its_own_sampler(fk: Kernel) -> None:
    """A top-k past the default width builds a sampler of its own; its notice says which, so
    the shape does not seem to be built twice."""
    ex = ok(fk, "%qwen3 --top-k 500 --seed 1 --max-new-tokens 3 hi")
    assert "batch 1 × cache 4096 (sampling, top-k up to 512) in" in ex.stdout, ex.stdout
    assert fk.value("len(_qwen3.token_ids)") == 3


def test_clean_dynamo_gives_back_the_fast_path_and_the_next_call_rebuilds_it(fk: Kernel) -> None:
    ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 4 hi")
    ex = ok(fk, "%qwen3_clean --dynamo")
    assert "fast decode path (its compiled step, cache and graphs)" in ex.stdout
    assert fk.value("SESSION.kept_memory()") == ()
    ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 4 hi")
    assert fk.value("(_qwen3.engine, _qwen3.completion_tokens)") == ("fast", 4)


def test_api_calls_show_their_own_build_notices_and_status(fk: Kernel) -> None:
    """A Python API call that builds a shape says so in its own cell (status line while it
    builds, the one-line notice at its end), not in the next %qwen3 cell."""
    ex = ok(fk, "rs = qwen3_jupyter.generate_batch(['a', 'b'], greedy=True, max_new_tokens=4)")
    took = r"(compiled the decode step|loaded the compiled decode step from the cache) for "
    assert re.search(took + r"batch 2 × cache 2048 in \d+\.\d s", ex.said), ex.said
    assert "compiling the decode step for batch 2 × cache 2048" in " ".join(ex.texts())
    assert fk.value("[len(r.token_ids) for r in rs]") == [4, 4]
    ex = ok(fk, "with qwen3_jupyter.inference(seed=1, max_new_tokens=4) as chat:\n    chat('hi')")
    assert re.search(took + r"batch 1 × cache 4096 \(sampling\)", ex.said), ex.said
    later = ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 2 hi").stdout
    assert "decode step" not in later, later


def test_unload_frees_the_model_and_the_cache(fk: Kernel) -> None:
    ok(fk, "%qwen3 --greedy --no-think --max-new-tokens 4 hi")
    ok(fk, "ref = weakref.ref(SESSION.loaded.model)")
    storages = "{p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in %s}"
    weights = sum(fk.value(storages % "SESSION.loaded.model.parameters()").values())
    before = fk.value(LIVE_BYTES)
    ex = ok(fk, "%qwen3 --unload")
    assert "model object freed" in ex.stdout
    assert fk.value("ref() is None and SESSION.kept_memory() == () and not SESSION.engines")
    freed = before - fk.value(LIVE_BYTES)
    # the 2.6 MiB decode cache with the weights: an engine still held would keep its cache
    assert freed >= weights + 2 * 2**20, (freed, weights)


_DUMP_STACKS_ON_SIGUSR1 = (
    "import faulthandler as _fh, signal as _sig\n"
    "_fh.register(_sig.SIGUSR1, file=open({path!r}, 'w'), all_threads=True)"
)
"""Kernel code that makes SIGUSR1 write every thread's stack to `path` (for a slow interrupt)."""


def _innermost(stacks: Path, frames: int = 12) -> str:
    """Each thread's innermost frames from a faulthandler dump (whole stacks run to pages)."""
    kept: list[str] = []
    for block in stacks.read_text().split("\n\n"):
        lines = block.strip().splitlines()
        kept.extend(lines[: frames + 1])
    return "\n".join(kept)


def _cold(kernel_env: dict[str, str], cache: Path) -> Iterator[Kernel]:
    """A fresh kernel with the extension loaded whose compile cache starts empty, so the first
    fast call really compiles (slow enough to interrupt, or to fail)."""
    kernel = Kernel({**kernel_env, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
    try:
        ok(kernel, "%load_ext qwen3_jupyter")
        yield kernel
    finally:
        kernel.shutdown()


@pytest.fixture
def cold_kernel(kernel_env: dict[str, str], tmp_path: Path) -> Iterator[Kernel]:
    yield from _cold(kernel_env, tmp_path / "cold-cache")


@pytest.fixture(scope="module")
def interrupted_kernel(
    kernel_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kernel]:
    """One cold kernel for both interrupt tests. After the compile test the greedy batch-1 step
    is built, so the warmup test's interrupt lands in a step only the warmup builds (batch 1
    sampled, or batch 8), and its next call does not compile batch 1 cold a second time (about
    20 s on 2 CPU cores). Either test alone still interrupts a cold compile."""
    yield from _cold(kernel_env, tmp_path_factory.mktemp("interrupted") / "cold-cache")


def test_a_failing_compiler_falls_back_with_one_line(cold_kernel: Kernel, tmp_path: Path) -> None:
    """A real compile failure: inductor's C++ compiler is missing and nothing is cached. The
    empty `.so` an interrupted compile of an older release left in the cache (which failed
    every later compile, in every kernel) is removed, and the line says so."""
    kernel = cold_kernel
    left = tmp_path / "cold-cache" / "ab" / "cabcdef.main.so"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"")
    ok(kernel, "import torch._inductor.config as c; c.cpp.cxx = ('/nonexistent/c++',)")
    ex = kernel.run("%qwen3 --fast --greedy --no-think --ignore-eos --max-new-tokens 6 hi")
    assert ex.status == "ok", ex.error
    assert "compiling the decode step failed" in ex.stdout
    assert "decoding with the static cache, uncompiled; removed 1 empty compiled file" in ex.stdout
    assert not left.exists()
    lines = [line for line in ex.stdout.splitlines() if "failed" in line]
    assert len(lines) == 1 and len(lines[0]) < 400
    assert kernel.value("(_qwen3.engine, _qwen3.completion_tokens)") == ("fast", 6)
    assert "Traceback" not in ex.stdout + ex.stderr


def test_an_interrupt_while_compiling_ends_the_call_and_the_next_call_compiles(
    interrupted_kernel: Kernel, tmp_path: Path
) -> None:
    """Stopping a slow first compile: the cell ends before the build does, with the prefill's
    token; the build time is not counted as generation time, nothing is lost, and the next call
    builds again.

    'Before the build does' is read in the kernel (fewer graphs than a whole build makes), not
    off a clock: how long the rest of a compile takes depends on the machine. If the interrupt
    is slow, the kernel's stacks at that moment go into the failure message."""
    kernel = interrupted_kernel
    ok(kernel, "keep_me = [41]")
    ok(kernel, "from qwen3_jupyter.engines.compile_setup import compiles_so_far")
    ok(kernel, "from qwen3_jupyter.session import SESSION")
    # torch.compile's own imports hold an interrupt until they are in (1.4 s on 2 cores; tested
    # by test_an_interrupt_inside_the_compilers_imports_waits_for_them): done ahead, so the
    # interrupt below lands in the compile itself
    ok(kernel, "from qwen3_jupyter.engines.compile_setup import import_compiler; import_compiler()")
    stacks = tmp_path / "stacks.txt"
    ok(kernel, _DUMP_STACKS_ON_SIGUSR1.format(path=str(stacks)))
    cell = "%qwen3 --fast --greedy --no-think --ignore-eos --max-new-tokens {n} hi"
    msg_id = kernel.start(cell.format(n=40))
    deadline, compiling = time.monotonic() + 120, False
    while time.monotonic() < deadline and not compiling:
        msg = kernel.kc.get_iopub_msg(timeout=120)
        data = msg["content"].get("data", {}).get("text/markdown", "")
        compiling = msg["parent_header"].get("msg_id") == msg_id and (
            "compiling the decode step" in data
        )
    assert compiling, "the call never said it was compiling"
    time.sleep(1.0)
    kernel.interrupt()
    where = ""
    try:
        ex = kernel.collect(msg_id, timeout=10)
    except TimeoutError:  # slow: note where the kernel is, then let the call end
        assert kernel.pid is not None
        os.kill(kernel.pid, signal.SIGUSR1)
        time.sleep(1.0)
        where = f"; the kernel, 10 s after the interrupt, was at:\n{_innermost(stacks)}"
        ex = kernel.collect(msg_id, timeout=300)
    graphs_when_interrupted = kernel.value("compiles_so_far()")
    assert ended_as_interrupted(ex), ex.stdout + where
    assert "interrupted: partial answer kept" in ex.stdout, ex.stdout + where
    assert "1 token (" in ex.stdout, where  # the prefill's token; the build made none
    assert "interrupted while building the decode step (compiling it)" in ex.stdout, where
    assert kernel.value("_qwen3.latency_s") < 1.0, "the build was counted as generation"
    assert kernel.value("keep_me") == [41]
    after = ok(kernel, cell.format(n=6))
    assert kernel.value("(_qwen3.engine, _qwen3.completion_tokens)") == ("fast", 6)
    # (seen twice in full runs before `children_spared`: the interrupt, sent to the kernel's
    # process group, killed inductor's g++ mid-write and the next call's compile failed)
    assert kernel.value("SESSION.engines['fast'].compile"), (
        f"compiling was switched off\ninterrupted call: {ex.stdout}\nnext call: {after.stdout}"
    )
    # A whole build is 3 graphs (embedding, one layer for all, greedy head: see
    # test_one_compiled_layer_serves_every_layer...). Compared with that, not with the count
    # after the next call: an interrupt landing as dynamo finished a graph can leave it in use
    # but uncounted (seen once in a full run: 0 graphs before the next call and 0 after it).
    assert graphs_when_interrupted < 3, (
        f"the interrupt waited for the compile{where}\ninterrupted call: {ex.stdout}\n"
        f"next call: {after.stdout}"
    )


INTERRUPT_INSIDE_THE_COMPILER_IMPORT = """
import os, signal, sys
import torch

class InterruptAt:  # presses the stop button as lowering.py, half done, imports this module
    def find_spec(self, name, path, target=None):
        if name == "torch._inductor.quantized_lowerings":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptAt())
from qwen3_jupyter.engines.compile_setup import import_compiler
try:
    import_compiler()
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
sys.meta_path.pop(0)
import torch._inductor.compile_fx, torch._inductor.lowering as lowering
print("mm has its lowering:", torch.ops.aten.mm.default in lowering.lowerings)
"""


def test_an_interrupt_inside_the_compilers_imports_waits_for_them() -> None:
    """The failure seen in full runs (the next call's compile failed: "both a fallback and a
    decomp for same op: aten.mm.default"): an interrupt inside lowering.py's import, after
    kernel/mm.py registered its lowering in that module's table, left a re-import with a new
    table without it. Sent from an import hook, the interrupt lands at the same point every
    run; in a process of its own, where nothing has imported inductor yet."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_INSIDE_THE_COMPILER_IMPORT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines == ["interrupted", "mm has its lowering: True"], done.stdout + done.stderr[-2000:]


def test_a_compiler_module_that_fails_to_import_is_left_for_the_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken module (a Triton that does not match torch) must fail where a failed compile is
    handled, not in `import_compiler`; an interrupt held meanwhile still arrives."""
    (tmp_path / "qwen3_broken_compiler_part.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
        "raise ImportError('built for another torch')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(compile_setup, "COMPILER_IMPORTS", ("qwen3_broken_compiler_part",))
    with pytest.raises(KeyboardInterrupt):
        compile_setup.import_compiler()
    monkeypatch.setattr(compile_setup, "COMPILER_IMPORTS", ("qwen3_no_such_compiler_part",))
    compile_setup.import_compiler()


def test_an_interrupted_warmup_is_one_line_and_loses_nothing(interrupted_kernel: Kernel) -> None:
    kernel = interrupted_kernel
    ok(kernel, "%qwen3 --max-new-tokens 2 load")
    ok(kernel, "from qwen3_jupyter.session import SESSION")
    assert kernel.value("'fast' not in SESSION.engines or SESSION.engines['fast'].compile"), (
        "compiling is off in this kernel before the warmup (see the compile-interrupt test)"
    )
    ok(kernel, "keep_me = [41]")
    msg_id = kernel.start("%qwen3 --fast --warmup --batch-size 8")
    time.sleep(3)  # a cold compile of the first shape not yet built takes longer than this
    kernel.interrupt()
    ex = kernel.collect(msg_id, timeout=60)
    assert ex.status == "error"
    message = ex.stderr.strip()
    assert message.startswith("UsageError: --warmup interrupted"), message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert kernel.value("keep_me") == [41]
    states = "[list(key) for key in SESSION.engines['fast'].states]"
    assert all(batch == 1 for batch, _ in kernel.value(states)), "a batch cache kept"
    ok(kernel, "%qwen3 --fast --greedy --no-think --ignore-eos --max-new-tokens 3 hi")
    assert kernel.value("(_qwen3.engine, _qwen3.completion_tokens)") == ("fast", 3)


def test_the_next_kernel_loads_the_compiled_step_from_disk(
    fk: Kernel, kernel_pool: KernelPool
) -> None:
    """The module's kernel compiled batch 1 × 4096 (greedy) into the shared cache folder."""
    kernel = kernel_pool.take()
    try:
        ok(kernel, "%load_ext qwen3_jupyter")
        ex = ok(kernel, "%qwen3 --fast --greedy --no-think --max-new-tokens 3 hi")
        assert "loaded the compiled decode step from the cache" in ex.stdout
        ok(kernel, "from qwen3_jupyter.engines.compile_setup import compile_cache_hits")
        assert kernel.value("compile_cache_hits() > 0")
        # ... and knew it would: the step was marked cached, so it loaded in-process
        ok(kernel, "from qwen3_jupyter.engines.compile_setup import compiling")
        key = "SESSION.engines['fast']._step_key('batch 1 × cache 4096')"
        ok(kernel, "from qwen3_jupyter.session import SESSION")
        assert kernel.value(f"compiling({key}).__enter__()") is True
    finally:
        kernel.shutdown()


def test_the_fast_path_leaves_the_users_compile_settings_alone(kernel_pool: KernelPool) -> None:
    """The fast path raised torch.compile's recompile limit to 64 and pointed
    $TORCHINDUCTOR_CACHE_DIR at its folder for the whole process, for good: a user's own
    compiled function went on past the limit they had set without torch's warning, and wrote
    its kernels into this package's folder, even after %unload_ext. Both hold only while the
    step compiles (or loads) now."""
    kernel = kernel_pool.take()
    try:
        ok(kernel, "import os, torch._dynamo.config as dc\ndc.recompile_limit = 3")
        ok(kernel, "env = os.environ.get('TORCHINDUCTOR_CACHE_DIR')")
        ok(kernel, "%load_ext qwen3_jupyter")
        ex = ok(kernel, "%qwen3 --fast --greedy --no-think --max-new-tokens 3 hi")
        assert "decode step" in ex.stdout, ex.stdout  # compiled, or loaded from the cache
        assert kernel.value("dc.recompile_limit") == 3
        assert kernel.value("os.environ.get('TORCHINDUCTOR_CACHE_DIR') == env")
    finally:
        kernel.shutdown()


def test_an_unexpected_fast_path_failure_decodes_eagerly_with_one_line(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks inside the fast path (a transformers release it does not fit), the call
    still answers — eagerly — and says so once; the fast path's memory is given back."""
    notices: list[str] = []
    engine = FastEngine(loaded, notify=notices.append)

    def broken_prefill(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("DynamicCache has no per-layer keys\nsecond line")

    monkeypatch.setattr(engine, "_prefill", broken_prefill)
    first = engine.generate("Hello", GREEDY)
    second = engine.generate("Hello", GREEDY)
    assert first.engine == second.engine == "eager"
    assert first.token_ids == EagerEngine(loaded).generate("Hello", GREEDY).token_ids
    assert len(notices) == 1 and "\n" not in notices[0]
    assert notices[0].startswith("fast decode failed (RuntimeError: DynamicCache has no")
    assert engine.kept_memory() == ()
    said = engine.warmup()  # built a cache and a step that no call would use, and kept them
    assert said.startswith("--warmup: nothing built, the fast path is off after it failed (")
    assert "%qwen3 --eager resets the choice" in said and "\n" not in said
    assert engine.kept_memory() == () and not engine.states


def test_a_failed_capture_names_its_own_cause_before_the_error_ending_it_raised() -> None:
    from qwen3_jupyter.engines.cuda_graphs import failure_text

    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("operation failed due to a previous error during capture") from None
    except RuntimeError as suppressed:
        assert failure_text(suppressed).startswith("RuntimeError: operation failed")
    try:
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("operation failed due to a previous error during capture")  # noqa: B904
    except RuntimeError as chained:
        assert failure_text(chained) == (
            "RuntimeError: operation not permitted when stream is capturing; then: "
            "RuntimeError: operation failed due to a previous error during capture"
        )


# ----------------------------------------------------------------------------- divergence


def test_divergence_helpers_tell_a_near_tie_from_a_clear_winner() -> None:
    from tests.divergence import (
        bf16_ulp,
        first_divergence,
        near_tie,
        pick_tolerance,
        rounding_bound,
        spread,
    )

    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert bf16_ulp(1.0) == 2**-7 and bf16_ulp(12.0) == 2**-4
    tie, message = near_tie([0.1, 12.0, 12.0625, -3.0], 2, 1)
    assert tie and "1.0 bf16 steps" in message
    clear, _ = near_tie([0.1, 12.0, 13.0, -3.0], 2, 1)
    assert not clear, "16 bf16 steps apart is a real difference"
    third, _ = near_tie([12.1, 12.0, 12.0625, -3.0], 2, 1)
    assert not third, "the decoded token must be the best of the scores it was decoded from"
    behind, message = near_tie([12.0625, 12.0, 12.03, -3.0], 0, 1)
    assert behind and "ranks 1 and 3" in message, "rank does not matter, the gap does"
    coarse, message = near_tie([3.0, 3.5, 0.0], 1, 0, 16, unit=2**-5)
    assert coarse and "16.0 bf16 steps (tolerance 16)" in message, "a whole answer's unit"
    assert rounding_bound([1.0, 2.0]) == 8.0, "never tighter than 8 steps"
    assert rounding_bound([3.9, 4.0, 3.0]) == 10.0, "2.5 times transformers' own worst step"
    assert pick_tolerance(4.0) == 10.0, "each candidate moved by 4, plus rounding the head"
    assert spread([3.0, 1.0, 2.0]) == "median 2.0, worst 3.0 bf16 steps"


def generate_with_scores(
    loaded: LoadedModel, prompt: str, options: GenerationOptions
) -> tuple[list[int], list[Any]]:
    """transformers' own greedy `generate` of `prompt`, templated as the engines template it:
    the completion's ids and, per step, the scores it picked each from (float32, on the CPU)."""
    import torch

    from qwen3_jupyter.generation import prompt_text

    tokenizer, model = loaded.tokenizer, loaded.model
    text = prompt_text(tokenizer, prompt, options)
    ids = tokenizer(text, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode():
        reference = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=options.max_new_tokens,
            min_new_tokens=options.max_new_tokens,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    completion = reference.sequences[0, ids.shape[1] :].tolist()
    return completion, [step[0].float().cpu() for step in reference.scores]


@dataclass
class TeacherForced:
    """The fast path fed generate's own tokens (teacher forcing), step by step.

    `step`: how far the step's logits are from generate's scores; `forward`: how far
    transformers' own second way of computing them is (one forward over the prompt and the
    answer, with SDPA) — per step, the largest difference over the vocabulary, in bf16 steps of
    generate's best score over the whole answer (`unit`). `picks`: the token the engine's own
    step (the CUDA graph, on a GPU) picked at each step, for generate's token at that index.

    Why: with random weights the logits are nearly flat, so greedy tokens part at near-ties
    even with a rotary position off by one (measured at full size: parted at token 3, 3 bf16
    steps); the whole logit vector does not hide it (median 17-34 steps against 3-4 for either
    correct way). And teacher forcing judges every step, not only the first divergence.
    """

    unit: float
    step: list[float]
    forward: list[float]
    picks: list[int]


def teacher_forced(
    engine: FastEngine,
    prompt: str,
    options: GenerationOptions,
    expected: list[int],
    scores: list[Any],
) -> TeacherForced:
    """`TeacherForced` for `engine`'s batch-1 shape, after a greedy call built its step."""
    import torch

    from qwen3_jupyter.generation import prompt_text
    from tests.divergence import bf16_ulp

    loaded = engine.loaded
    model, tokenizer = loaded.model, loaded.tokenizer
    encoded = tokenizer([prompt_text(tokenizer, prompt, options)], return_tensors="pt")
    usable = torch.isfinite(scores[0])  # not the end-of-sequence ids min_new_tokens masks
    unit = bf16_ulp(max(float(step[usable].max()) for step in scores))

    def difference(logits: Any, step: int) -> float:
        return float((logits.float().cpu()[usable] - scores[step][usable]).abs().max()) / unit

    parts = engine.compiled_step if engine.compile and engine.compiled_step else PLAIN_STEP
    state = engine.states[(1, 4096)]
    buffers = state.buffers
    result = TeacherForced(unit, [], [], [])
    with torch.inference_mode():
        engine._prefill(state, encoded, options, 0)
        for step, token in enumerate(expected[:-1], start=1):
            buffers.tokens.fill_(token)
            hidden, cos, sin, allowed = parts.start(model, buffers)
            for layer, keys, values in zip(
                model.model.layers, buffers.keys, buffers.values, strict=True
            ):
                hidden = parts.layer(layer, hidden, cos, sin, allowed, buffers.slot, keys, values)
            logits = model.lm_head(model.model.norm(hidden)[:, -1, :])[0]
            result.step.append(difference(logits, step))
            buffers.positions.add_(1)
            buffers.slot.add_(1)
        engine._prefill(state, encoded, options, 0)
        for token in expected[:-1]:
            buffers.tokens.fill_(token)
            state.steps[0]()  # the greedy step as calls run it: replaying its graph on a GPU
            result.picks.append(int(buffers.tokens[0, 0]))
        ids = encoded["input_ids"].to(model.device)
        answer = torch.tensor([expected[:-1]], device=model.device)
        logits = model(input_ids=torch.cat([ids, answer], dim=1)).logits[0, ids.shape[1] - 1 :]
        result.forward = [difference(logits[step], step) for step in range(1, len(expected))]
    return result


def forced_misses(forced: TeacherForced, expected: list[int], scores: list[Any]) -> list[str]:
    """The steps where the engine's step, fed generate's tokens, picked a token further from
    generate's choice, in generate's own scores, than that step's logits explain."""
    from tests.divergence import near_tie, pick_tolerance

    misses = []
    for index, pick in enumerate(forced.picks, start=1):
        if pick != expected[index]:
            tolerance = pick_tolerance(forced.step[index - 1])
            tie, message = near_tie(
                scores[index].tolist(), expected[index], pick, tolerance, forced.unit
            )
            if not tie:
                misses.append(f"token {index}: {message}")
    return misses


def judge_bfloat16(
    engine: FastEngine, prompt: str, options: GenerationOptions, notices: list[str]
) -> str:
    """Assert that `engine`'s greedy answer to `prompt` differs from generate's by bf16
    rounding only, three ways: fed generate's tokens, the step's logits stay within
    `rounding_bound` of generate's scores; the step's own picks there (its CUDA graph, on a
    GPU) part from generate's only where those logits explain it (`pick_tolerance`); and so
    does the answer where it first parts. Returns the figures, for the test's output."""
    from tests.divergence import first_divergence, near_tie, pick_tolerance, rounding_bound, spread

    expected, scores = generate_with_scores(engine.loaded, prompt, options)
    fast = engine.generate(prompt, options).token_ids
    assert len(fast) == len(expected) == options.max_new_tokens
    forced = teacher_forced(engine, prompt, options, expected, scores)
    bound = rounding_bound(forced.forward)
    said = (
        f"{prompt[:30]!r}: fed generate's tokens, the step's logits {spread(forced.step)} "
        f"from generate's (one forward: {spread(forced.forward)}; bound {bound:.1f})"
    )
    noticed = f"; notices: {notices}" if notices else ""
    assert max(forced.step) <= bound, f"{said}{noticed}"
    misses = forced_misses(forced, expected, scores)
    assert not misses, (
        f"{said}; the step's own picks were not near-ties at {len(misses)} steps: {misses[:3]}"
        f"{noticed}"
    )
    index = first_divergence(expected, fast)
    if index is not None:  # the same state as teacher forcing reached there (the prefill's: 0)
        tolerance = pick_tolerance(forced.step[index - 1]) if index else bound
        tie, message = near_tie(
            scores[index].tolist(), expected[index], fast[index], tolerance, forced.unit
        )
        assert tie, (
            f"{said}; the answer parted from generate at token {index} where generate's choice "
            f"was clearly ahead: {message}; generate {expected[: index + 1]}, fast "
            f"{fast[: index + 1]}{noticed}"
        )
    agreed = sum(pick == token for pick, token in zip(forced.picks, expected[1:], strict=True))
    return (
        f"{said}; the step's picks agreed with generate's at {agreed} of {len(forced.picks)} "
        f"steps; the answer first parted at {index}"
    )


def test_bfloat16_fast_path_differs_from_generate_by_rounding_only(loaded: LoadedModel) -> None:
    """The GPU test's judgement (`judge_bfloat16`), on the CPU. In bfloat16 the step (scores
    in bf16, as transformers' eager attention) and generate's SDPA round differently, so greedy
    answers may part, at near-ties; fed generate's tokens, the step's logits stay as close to
    generate's as transformers' own second way of computing them (a rotary position off by one
    moved them 127 bf16 steps, a token that did not see its own cache slot 230). The step runs
    uncompiled: its own arithmetic in bf16 (the cache's dtype, its casts, the attention) is
    what this checks, without a second cold CPU compile."""
    import copy

    import torch

    model = copy.deepcopy(loaded.model).to(torch.bfloat16)  # the perturbed weights, rounded
    bf16 = LoadedModel("tiny", "", model, loaded.tokenizer, "cpu", "bfloat16", True)
    options = GenerationOptions(greedy=True, think=False, max_new_tokens=48, ignore_eos=True)
    engine = FastEngine(bf16)
    engine.compile = False
    try:
        seen = [
            judge_bfloat16(engine, prompt, options, [])
            for prompt in (PROMPTS[1], "Write a haiku about GPUs. " * 8, "a")
        ]
        assert engine.states[(1, 4096)].buffers.keys[0].dtype == torch.bfloat16
    finally:
        engine.close()
    print("\n".join(seen))


# ----------------------------------------------------------------------------- GPU


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


gpu = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def full_size(model_cache: Path) -> Iterator[LoadedModel]:
    """random:Qwen3-1.7B in bf16 on the GPU (the shape the issue's figures are for)."""
    holder = ModelHolder()
    yield holder.get(ModelChoice("random:Qwen3-1.7B", "cuda", "bfloat16"))
    holder.unload()


@pytest.mark.gpu
@gpu
def test_gpu_tiny_float32_greedy_tokens_are_identical(model_cache: Path) -> None:
    holder = ModelHolder()
    model = holder.get(ModelChoice("tiny", "cuda", "float32"))
    perturb(model.model)
    engine = FastEngine(model, notify=print)
    try:
        for prompt in PROMPTS:
            expected = EagerEngine(model).generate(prompt, GREEDY).token_ids
            assert engine.generate(prompt, GREEDY).token_ids == expected
        assert engine.compile, "the step compiled (a failed compile prints why above)"
        assert engine.states[(1, 4096)].graphs, "the step was captured as a CUDA graph"
    finally:
        engine.close()
        holder.unload()


@pytest.mark.gpu
@gpu
def test_gpu_tiny_float32_batches_match_one_by_one(model_cache: Path) -> None:
    """generate_batch on CUDA decodes through the fast path too: rows of different lengths,
    left-padded and captured as one batch graph, each token for token what eager generate gives
    that prompt alone; afterwards only the batch-1 cache is kept."""
    holder = ModelHolder()
    model = holder.get(ModelChoice("tiny", "cuda", "float32"))
    perturb(model.model)
    engine = FastEngine(model, notify=print)
    prompts = [*PROMPTS, "a"]
    try:
        expected = [EagerEngine(model).generate(p, GREEDY).token_ids for p in prompts]
        engine.generate(prompts[0], GREEDY)  # the batch-1 shape exists, as in a notebook
        results = engine.generate_batch(prompts, GREEDY, batch_size=4, progress=False)
        assert [r.token_ids for r in results] == expected
        assert results.report.held_batch_size == 4 and not results.report.back_offs
        assert engine.compile and engine.capture, "compiled and captured (else printed above)"
        assert engine.kept_memory()[0].label == "decode cache (1×4096)"
        assert list(engine.states) == [(1, 4096)], "the batch shape's cache was given back"
    finally:
        engine.close()
        holder.unload()


@pytest.mark.gpu
@gpu
def test_gpu_a_failed_capture_gives_back_the_stream_and_the_pool(model_cache: Path) -> None:
    """A step that waits for the host cannot be captured (here a hook's `.item()`): ending the
    capture raises, and torch then leaves its capture stream current (the user's next cells
    would run on it) and the allocator routing that stream into the graph's pool. The call
    must still answer token for token without a graph, the default stream be current again,
    and closing the engine give every byte back."""
    import torch

    holder = ModelHolder()
    model = holder.get(ModelChoice("tiny", "cuda", "float32"))
    perturb(model.model)
    expected = EagerEngine(model).generate(PROMPTS[0], GREEDY).token_ids
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()  # close() clears them too
    torch.cuda.empty_cache()
    allocated_before = torch.cuda.memory_allocated()
    reserved_before = torch.cuda.memory_reserved()

    def wait_for_the_host(module: Any, args: tuple[Any, ...]) -> None:
        args[0].sum().item()  # returns None: a pre-hook's return value would replace the input

    waits = model.model.model.layers[0].mlp.register_forward_pre_hook(wait_for_the_host)
    notices: list[str] = []
    engine = FastEngine(model, notify=notices.append)
    engine.compile = False  # the hook runs as written (torch.compile would break the graph there)
    try:
        assert engine.generate(PROMPTS[0], GREEDY).token_ids == expected
        assert not engine.capture, notices
        assert any("capturing the decode step as a CUDA graph failed" in n for n in notices)
        print(notices)
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        assert engine.generate(PROMPTS[0], GREEDY).token_ids == expected, "and the next call"
    finally:
        waits.remove()
        engine.close()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated_before
    assert torch.cuda.memory_reserved() <= reserved_before, "the graph's pool was given back"
    holder.unload()


@pytest.mark.gpu
@gpu
def test_gpu_full_size_differs_from_generate_by_rounding_only(full_size: LoadedModel) -> None:
    """bf16 makes exact equality impossible to promise: the compiled, captured fast path must
    differ from generate by rounding only (`judge_bfloat16`: its logits fed generate's tokens,
    its graph's picks there, the answer's first divergence). With random weights the logits are
    nearly flat: a first divergence alone passed a rotary position off by one, on the CPU; the
    logits, fed generate's tokens, failed it by 81 bf16 steps."""
    options = GenerationOptions(greedy=True, think=False, max_new_tokens=64, ignore_eos=True)
    notices: list[str] = []  # a failed compile or capture says why here: in every message below
    engine = FastEngine(full_size, notify=notices.append)
    try:
        for prompt in ("Why is the sky blue?", "Write a haiku about GPUs. " * 8):
            print(judge_bfloat16(engine, prompt, options, notices))
            assert engine.compile, f"compiling was switched off: {notices}"
            assert engine.states[(1, 4096)].graphs, f"no CUDA graph was captured: {notices}"
    finally:
        engine.close()


def _cublas_workspace_bytes() -> int:
    """What one stream's cuBLAS workspace holds (32 MiB on Hopper with torch's default), measured:
    every workspace cleared, then one matrix product on the current stream."""
    import torch

    square = torch.ones(64, 64, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    before = torch.cuda.memory_allocated()
    product = square @ square
    del product
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    assert grown > 0, "a matrix product made no cuBLAS workspace"
    return grown


@pytest.mark.gpu
@gpu
def test_gpu_decode_cache_is_named_and_given_back(full_size: LoadedModel) -> None:
    """448 MiB of cache at 4,096 tokens (28 layers x K,V x 8 heads x 128 x bf16), a graph pool,
    nothing more retained over ten calls, and every byte back after close (what --eager and
    --unload call): torch's allocated and reserved figures."""
    import torch

    options = GenerationOptions(greedy=True, think=False, max_new_tokens=32, ignore_eos=True)
    from qwen3_jupyter.cleanup import _NVML

    workspace = _cublas_workspace_bytes()
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()  # counted in allocated; close() clears them too
    torch.cuda.empty_cache()
    allocated_before = torch.cuda.memory_allocated()
    reserved_before = torch.cuda.memory_reserved()
    nvml_before = _NVML.process_memory().get("cuda:0")
    notices: list[str] = []
    engine = FastEngine(full_size, notify=notices.append)
    result = engine.generate("hi", options)
    assert engine.compile and engine.states[(1, 4096)].graphs, (
        f"not compiled and captured: {notices}"
    )
    nvml_with = _NVML.process_memory().get("cuda:0")
    kept = {k.label: k.nbytes for k in engine.kept_memory()}
    grown = (torch.cuda.memory_reserved() - reserved_before) / 2**20
    print(result.kept_memory, f"{result.tokens_per_s:.0f} tok/s; reserved grew {grown:.0f} MiB")
    # (the allocator serves 8 MiB tensors from 20 MiB segments: up to 560 MiB reserved for the
    # 448 MiB cache, the rest reusable by other allocations of 1-4 MiB)
    held = engine.states[(1, 4096)].held_bytes  # (no reference kept: close() must free it)
    assert engine.states[(1, 4096)].buffers.cache_bytes == 448 * 2**20
    assert kept["decode cache (1×4096)"] == held  # the cache + 0.6 MiB of state and bias
    assert kept.get("CUDA graph pool", 0) > 0
    assert "decode cache (1×4096) 448.6 MiB on cuda:0, kept for speed" in result.kept_memory
    # Capturing cleared every cuBLAS workspace (see cuda_graphs.record): the next call's prefill
    # makes the default stream's again, once. Exactly that, and then nothing over ten calls.
    after_first = torch.cuda.memory_allocated()
    engine.generate("hi", options)
    regrown = torch.cuda.memory_allocated() - after_first
    assert regrown in (0, workspace), f"the second call kept {regrown} bytes ({workspace=})"
    after_second = torch.cuda.memory_allocated()
    for _ in range(10):
        engine.generate("hi", options)
        assert torch.cuda.memory_allocated() == after_second
    engine.close()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated_before
    assert torch.cuda.memory_reserved() <= reserved_before
    nvml_after = _NVML.process_memory().get("cuda:0")
    print(f"NVML, this process: {nvml_before} -> {nvml_with} -> {nvml_after}")
    if nvml_before is not None and nvml_with is not None and nvml_after is not None:
        assert nvml_with - nvml_after >= 448 * 2**20  # (None: NVML cannot see this PID)
        assert nvml_after <= nvml_before + 32 * 2**20
