"""The fast engine: a static KV cache and one compiled decode step, replayed as a CUDA graph.

Why: transformers' eager loop is bound by Python and kernel launches per token (38 tok/s for the
1.7B shape on an H100 whose memory bandwidth allows ~970). Here the prompt is prefilled eagerly
by the model's own forward, its keys/values are copied into a cache of fixed shape, and every
further token is one call of `qwen3_step.decode_step` — its parts (embedding, one decoder layer
that serves every layer, head and sampler) compiled once per shape with torch.compile and, on
CUDA, the whole step captured once as a CUDA graph, so a token costs one graph replay.
The host reads each token one step late (pinned copy + event), so the GPU never waits on Python.

This module runs calls; a shape's step is built (buffers, compile, capture) by `decode_steps`,
and a call's host side (tokens per row, stops, streamed text) is kept by `decode_run`.

Shapes are bucketed (`decode_shapes`) so a new prompt length never compiles again; a batch's
extra rows repeat its last prompt and are dropped. Compiling is set up by `compile_setup`
(on/off, the on-disk cache, the shape limit). The cache and the graphs' memory pool are kept
between calls on purpose — `kept_memory()` names them, and `close()` (what `--eager` and
`--unload` call) gives every byte back.

A failed compile falls back to the uncompiled step (still a static cache, still one graph), a
failed capture to calling the step directly; each says so in one line and never crashes a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..generation import (
    DEFAULT_MAX_NEW_TOKENS,
    ChunkInterrupted,
    GenerationOOM,
    GenerationOptions,
    Result,
    completed_result,
    current_memory,
    enforce_budget,
    eos_ids,
    oom_error,
    oom_reason,
    prompt_text,
    release_after_generation,
)
from ..memory import format_bytes, process_rss, trim_host_heap
from ..model_use import decode_step_done
from ..out_of_memory import allocation_failures_as_oom
from . import qwen3_step
from .attention import planless_attention
from .base import EngineError, KeptMemory, TextCallback
from .compile_setup import (
    compile_cache_hits,
    compile_enabled,
    tuning_enabled,
)
from .cuda_graphs import (
    WARMUP_RUNS,
    first_line,
    on_device,
)
from .decode_run import CallbackFailed, DecodeRun, TextStream, TokenReader
from .decode_shapes import SAMPLE_WIDTH, batch_bucket, cache_bucket, sample_width
from .decode_steps import DecodeState, Notify, StepBuilding
from .local import LocalEngine, decodes, holds_model, position_limit
from .seeding import seeded

WARMUP_PROMPT_TOKENS = 64
"""The prompt a warm-up sizes its caches for: a question in the chat template. A batch's cache
grows with prompt + answer (`cache_bucket`), so a warm-up sized for no answer built a 16×512
step that a default call (512 new tokens, 16×1024) compiled again."""

REHEARSAL_STEPS = 1 + WARMUP_RUNS
"""Steps that building a shape runs before the call's own (one compile run, the warm-ups before
a CUDA graph capture): they write cache slots past the prompt, so the cache leaves room for them
(an index past its end is a device-side assert on CUDA, which ends the process's CUDA context)."""


SHORTEST_PROMPT_TOKENS = 8
"""The fewest tokens a call's prompt has: a word in the chat template (`hi` with --no-think is 9
for Qwen3)."""


def warmup_cache_lengths(batch: int, max_new_tokens: int, limit: int = 0) -> list[int]:
    """The cache lengths calls of `batch` rows asking `max_new_tokens` use (as `_run` sizes
    them) for prompts of `SHORTEST_PROMPT_TOKENS` to `WARMUP_PROMPT_TOKENS`, the longest first:
    two where they fall in different buckets (a warm-up for 4,030 new tokens built 1×8192, and a
    9-token call then built 1×4096). Only prompts the model's `limit` positions (0: unknown)
    take with the answer; none when even the shortest cannot."""
    prompts = [
        tokens
        for tokens in (WARMUP_PROMPT_TOKENS, SHORTEST_PROMPT_TOKENS)
        if not limit or tokens + max_new_tokens <= limit
    ]
    lengths = {cache_bucket(p + max_new_tokens + REHEARSAL_STEPS, batch=batch) for p in prompts}
    return sorted(lengths, reverse=True)


class FastEngine(StepBuilding, LocalEngine):
    """Static cache + compiled decode step (+ CUDA graph): the default on CUDA."""

    kind = "fast"

    def __init__(self, loaded: Any, notify: Notify | None = None) -> None:
        qwen3_step.check_supported(loaded.model)
        super().__init__(loaded)
        self.notify: Notify = notify or (lambda message: None)
        self.status: Callable[[str], None] | None = None
        self.states: dict[tuple[int, int], DecodeState] = {}
        self.compile = compile_enabled()
        self.tune = tuning_enabled()
        """Compile with inductor's kernel tuning ($QWEN3_JUPYTER_TUNE; a slower first compile)."""
        self.compiled_step: qwen3_step.StepParts | None = None
        self.compile_seconds: list[tuple[str, float]] = []
        self.compiles = 0
        """torch.compile graphs this engine caused (a new shape adds up to three, one per part of
        the step; 0 on a cached shape)."""
        self._capture_stream: Any = None
        """One side stream for every warm-up and capture (each new stream would get a cuBLAS
        workspace of its own)."""
        self.capture = True
        """False once a capture failed in this kernel: later shapes run without a graph at once."""
        self.broken = ""
        """Why the fast path failed in this kernel ('' while it works); calls then go eager."""
        self._eos = sorted(eos_ids(loaded.model, loaded.tokenizer))

    # ------------------------------------------------------------------ Engine

    def kept_memory(self) -> tuple[KeptMemory, ...]:
        states = list(self.states.values())
        if not states:
            return ()
        shapes = ", ".join(f"{s.batch}×{s.length}" for s in states)
        kept = [
            KeptMemory(f"decode cache ({shapes})", sum(s.held_bytes for s in states), self.device)
        ]
        graphs = sum(s.graph_bytes for s in states)
        if graphs:
            kept.append(KeptMemory("CUDA graph pool", graphs, self.device))
        return tuple(kept)

    def holdings(self) -> tuple[object, ...]:
        """The buffers kept (a copy of the shapes first: a verbose cleanup may ask while another
        thread's batch adds or drops one)."""
        return tuple(state.buffers for state in list(self.states.values()))

    @holds_model("closing the fast decode path", needs_model=False)
    def close(self) -> None:
        """Drop every cache and graph and return their memory to the driver — and the cuBLAS
        workspaces, which capturing on a side stream adds (they come back lazily)."""
        used_side_stream = self._capture_stream is not None  # even if no state is left now
        self.states.clear()
        self.compiled_step = None
        self._capture_stream = None
        release_after_generation(self.device, None)
        if self.device == "cpu":
            trim_host_heap()
        if used_side_stream:
            import torch

            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:
                with on_device(self.device):
                    torch.cuda.synchronize()
                    clear()
                    torch.cuda.empty_cache()

    def describe(self) -> str:
        mode = ("compiled, tuned" if self.tune else "compiled") if self.compile else "not compiled"
        return f"fast decode ({mode}, static cache) for {self.model_name} on {self.device}"

    @holds_model("a generation")
    def generate(
        self,
        prompt: str,
        options: GenerationOptions,
        *,
        history: list[dict[str, str]] | None = None,
        on_text: TextCallback | None = None,
        stream_interval: float = 0.1,
        memory_budget: int | None = None,
    ) -> Result:
        """One answer through the fast path, streamed; memory beyond the kept cache released."""
        tokenizer = self.loaded.tokenizer
        text = prompt_text(tokenizer, prompt, options, history)
        streamed = TextStream(tokenizer, on_text, stream_interval) if on_text else None
        try:
            run = self._guarded_run(
                [text], [prompt], options, memory_budget, streamed, chat=bool(history)
            )
        except _Unavailable:
            return self._eager().generate(
                prompt,
                options,
                history=history,
                on_text=on_text,
                stream_interval=stream_interval,
                memory_budget=memory_budget,
            )
        except _OutOfMemory as exc:
            freed = release_after_generation(self.device, current_memory(self.device)[0])
            raise oom_error(
                self.device,
                exc.new_tokens,
                exc.reason,
                memory_budget,
                freed,
                exc.hint(memory_budget),
            ) from None
        completion = run.completions[0]
        result = completed_result(
            self.loaded, options, completion, self.kind, run.peak_rss, self._kept_text()
        )
        freed = release_after_generation(self.device, run.memory_at_end)
        if streamed is not None:  # after the release: an error of the caller's holds nothing
            from ..models import HOLDER

            with HOLDER.use.decoding():  # still this decode's callback: no generation inside
                streamed.flush(completion.text)
        return replace(result, memory_freed_bytes=freed)

    @holds_model("a batch")
    def generate_chunk(
        self, prompts: list[str], options: GenerationOptions, budget: int | None
    ) -> tuple[list[Result], int]:
        tokenizer = self.loaded.tokenizer
        texts = [prompt_text(tokenizer, p, options) for p in prompts]
        out_of_memory: tuple[str, str] | None = None
        try:
            run = self._guarded_run(texts, prompts, options, budget, None)
        except _Unavailable:
            return self._eager().generate_chunk(prompts, options, budget)
        except _OutOfMemory as exc:
            out_of_memory = (exc.reason, exc.hint(budget))
        if out_of_memory is not None:
            # The back-off asks a smaller batch next, never this shape again: its cache and
            # graphs go now, not after the smaller chunks (which they would crowd out). Out of
            # the except block: the error's traceback held the failed run's frame, and with it
            # the cache and the step this release was to give back.
            self._drop_states(lambda state: state.batch > 1)
            release_after_generation(self.device, None)
            raise GenerationOOM(*out_of_memory)
        if run.interrupted:
            raise ChunkInterrupted(run.peak_tensor_bytes)
        freed = release_after_generation(self.device, run.memory_at_end)
        kept = self._kept_text()
        results = [
            replace(
                completed_result(self.loaded, options, c, self.kind, run.peak_rss, kept),
                memory_freed_bytes=freed,
            )
            for c in run.completions
        ]
        return results, run.peak_tensor_bytes

    @holds_model("a batch")  # its clean-up too: a refused call must not drop the holder's shapes
    def generate_batch(self, prompts: Any, options: GenerationOptions, **kwargs: Any) -> Any:
        """Batches as the other local engines do; afterwards only the batch-1 shape is kept."""
        try:
            return super().generate_batch(prompts, options, **kwargs)
        finally:
            self._drop_states(lambda state: state.batch > 1)

    # ------------------------------------------------------------------ warm-up

    @holds_model("a warm-up (--warmup)")
    def warmup(
        self,
        batch_sizes: tuple[int, ...] = (1,),
        greedy_and_sampled: bool = True,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> str:
        """Compile (and capture, on CUDA) the shapes calls of `max_new_tokens` use; one line
        saying what it did.

        A batch shape's cache is given back at once, as after every `generate_batch` call: what
        warming it up keeps is its compiled step, so the batch call itself compiles nothing.
        After the fast path failed (calls decode eagerly), nothing is built: it would be
        memory no call uses."""
        import torch

        if self.broken:
            return (
                f"--warmup: nothing built, the fast path is off after it failed ({self.broken}); "
                "calls decode eagerly, and %qwen3 --eager resets the choice"
            )
        limit = position_limit(getattr(self.loaded.model, "config", None))
        lengths = {b: warmup_cache_lengths(b, max_new_tokens, limit) for b in batch_sizes}
        if not lengths[batch_sizes[0]]:  # would be a cache no call can use (14 GiB at 1.7B)
            raise EngineError(
                f"--warmup --max-new-tokens {max_new_tokens:,}: even a prompt of "
                f"{SHORTEST_PROMPT_TOKENS} tokens with that many exceeds the {limit:,} "
                f"positions of {self.model_name}: give it what your calls ask"
            )
        started = time.perf_counter()
        before, hits = self.compiles, compile_cache_hits()
        vocab = int(self.loaded.model.lm_head.weight.shape[0])
        widths = (0, sample_width(GenerationOptions(), vocab)) if greedy_and_sampled else (0,)
        building, out_of_memory = (1, 0), ""
        try:
            with torch.inference_mode(), on_device(self.device), allocation_failures_as_oom():
                for batch in batch_sizes:
                    for length in lengths[batch]:  # the shortest prompts' shape is kept
                        building = (batch_bucket(batch), length)
                        state = self._state(*building)
                        for width in widths:
                            self._step_for(state, width)
        except torch.OutOfMemoryError as exc:
            out_of_memory = oom_reason(exc)
        finally:
            self._drop_states(lambda state: state.batch > 1)
        if out_of_memory:  # out of the except block: its frames held what the release frees
            release_after_generation(self.device, None)
            raise EngineError(self._warmup_out_of_memory(*building, out_of_memory))
        shapes = ", ".join(
            f"{batch_bucket(b)}×{'/'.join(str(n) for n in lengths[b])}" for b in batch_sizes
        )
        batches = [b for b in batch_sizes if batch_bucket(b) > 1]
        step = "the compiled step" if self.compile else "the step (not compiled)"
        given_back = (
            f"; batch {', '.join(str(batch_bucket(b)) for b in batches)}: cache given back, "
            f"{step} kept for generate_batch"
            if batches
            else ""
        )
        how = (  # after a failed compile: not "nothing new to compile"
            _graphs_built(self.compiles - before, compile_cache_hits() - hits)
            if self.compile
            else "not compiled"
        )
        return (
            f"fast decode ready for batch × cache {shapes} "
            f"({how}, {time.perf_counter() - started:.1f} s){given_back}"
        )

    def _warmup_out_of_memory(self, batch: int, length: int, reason: str) -> str:
        """The one line a warm-up that ran out of memory ends with (it was a traceback): the
        shape it was building, what it needs, and what to ask for instead."""
        held = format_bytes(self._held_bytes(batch, length))
        smaller = "--batch-size or --max-new-tokens" if batch > 1 else "--max-new-tokens"
        kept = "; the batch-1 shape built before it is kept" if batch > 1 else ""
        return (
            f"--warmup ran out of memory building the {held} decode cache for batch × cache "
            f"{batch}×{length:,} ({reason}): warm up a smaller {smaller}, or run "
            f"%qwen3_clean --verbose to see what else holds memory{kept}"
        )

    # ------------------------------------------------------------------ the decode

    def _kept_text(self) -> str:
        from .base import describe_kept

        return describe_kept(self.kept_memory())

    def _eager(self) -> LocalEngine:
        from .eager import EagerEngine

        return EagerEngine(self.loaded)

    @decodes
    def _guarded_run(
        self,
        texts: list[str],
        prompts: list[str],
        options: GenerationOptions,
        budget: int | None,
        streamed: TextStream | None,
        chat: bool = False,
    ) -> DecodeRun:
        """`_run`, except that an unexpected failure of the fast path (a transformers or torch
        release it does not fit, say) never fails the call: it is said in one line, the fast
        path's memory is given back, and this call and the next ones decode eagerly until
        `%qwen3 --eager` resets the choice. An error of the caller's own `on_text` is theirs:
        it ends the call as it is, and the fast path stays."""
        if self.broken:
            raise _Unavailable
        try:
            with on_device(self.device), seeded(options.seed, self.device):
                return self._run(texts, prompts, options, budget, streamed, chat)
        except CallbackFailed as failed:
            raise failed.error from None
        except (_OutOfMemory, GenerationOOM, EngineError, KeyboardInterrupt):
            raise
        except Exception as exc:
            self.broken = first_line(exc)
        # Out of the except block: its traceback held the failed run's frames, and with them
        # the cache and the graphs, which close() could then not give back.
        self.close()
        self.notify(
            f"fast decode failed ({self.broken}); decoding eagerly in this kernel from now "
            "on (run %qwen3 --eager once to reset, then the next call tries the fast path)"
        )
        raise _Unavailable

    def _run(
        self,
        texts: list[str],
        prompts: list[str],
        options: GenerationOptions,
        budget: int | None,
        streamed: TextStream | None,
        chat: bool = False,
    ) -> DecodeRun:
        import torch

        tokenizer, model, device = self.loaded.tokenizer, self.loaded.model, self.device
        rows = len(texts)
        batch = batch_bucket(rows)
        for text in texts:
            self.check_text_early(text, options, chat=chat)
        padded = texts + [texts[-1]] * (batch - rows)
        encoded = tokenizer(padded, return_tensors="pt", padding=True, padding_side="left")
        width = int(encoded["input_ids"].shape[1])
        self.check_positions(width, options, chat=chat)
        needed = width + options.max_new_tokens
        length = cache_bucket(needed + REHEARSAL_STEPS, batch=batch)
        vocab = int(model.lm_head.weight.shape[0])
        sample = sample_width(options, vocab)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        run = DecodeRun(rows=rows, peak_rss=process_rss())
        started = time.perf_counter()
        out_of_memory: str | None = None
        try:
            run.peak_tensor_bytes = self._estimate(batch, length, vocab)
            enforce_budget(run.peak_tensor_bytes, budget)
            with torch.inference_mode(), allocation_failures_as_oom():
                state = self._state(batch, length)
                first = self._prefill(state, encoded, options, sample)
                run.note(first, self._eos, options, started)
                if streamed is not None:
                    streamed.update(run.ids[0])
                if not run.done(options):
                    setup_before = state.setup_seconds
                    try:
                        step = self._step_for(state, sample)
                    except KeyboardInterrupt:  # the footer alone read as a 1-token answer
                        self.notify(
                            "interrupted while building the decode step (compiling it): the "
                            "next fast call builds it again"
                        )
                        raise
                    finally:  # an interrupted build is not generation time either
                        run.setup_seconds = state.setup_seconds - setup_before
                    self._decode(step, state.buffers.tokens, run, options, streamed, started)
        except KeyboardInterrupt:
            run.interrupted = True
            if device.startswith("cuda"):
                torch.cuda.synchronize(torch.device(device))
        except torch.OutOfMemoryError as exc:
            out_of_memory = oom_reason(exc)
        if out_of_memory is not None:
            # Outside the except block: the failing frames (a prefill's activations, say) are
            # gone now, so the release that follows can give their memory back.
            new_tokens = max((len(r) for r in run.ids), default=0)
            held = self._held_bytes(batch, length)
            raise _OutOfMemory(out_of_memory, new_tokens, f"{batch}×{length}", held)
        run.latency = time.perf_counter() - started - run.setup_seconds
        run.memory_at_end = current_memory(device)[0]
        if device == "cpu":
            run.peak_rss = max(run.peak_rss, process_rss())
        run.finish(prompts, encoded["attention_mask"], tokenizer, self._eos)
        return run

    def _estimate(self, batch: int, length: int, vocab: int) -> int:
        """Bytes a shape holds while decoding: its cache plus logits and sampler work."""
        config = self.loaded.model.config
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        itemsize = self.loaded.model.lm_head.weight.element_size()
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * itemsize
        return batch * length * per_token + batch * vocab * 4 * 3

    def _held_bytes(self, batch: int, length: int) -> int:
        """What a shape's buffers hold, the figure the footer calls "decode cache": the same
        buffers allocated on the meta device, which costs no memory."""
        import torch

        meta = torch.device("meta")
        return qwen3_step.allocate(self.loaded.model, batch, length, SAMPLE_WIDTH, meta).held_bytes

    def _state(self, batch: int, length: int) -> DecodeState:
        """The kept buffers for this shape, allocating them (and dropping other batch shapes)."""
        import torch

        key = (batch, length)
        state = self.states.get(key)
        if state is not None:
            return state
        self._drop_states(lambda s: s.batch == batch or (s.batch > 1 and batch > 1))
        buffers = qwen3_step.allocate(
            self.loaded.model, batch, length, SAMPLE_WIDTH, torch.device(self.device)
        )
        buffers.bias[self._eos] = float("-inf")  # overwritten per call; keeps a safe default
        state = DecodeState(batch, length, buffers)
        self.states[key] = state
        return state

    def _drop_states(self, which: Callable[[DecodeState], bool]) -> None:
        dropped = [key for key, state in self.states.items() if which(state)]
        for key in dropped:
            del self.states[key]
        if dropped:
            release_after_generation(self.device, None)

    def _prefill(
        self, state: DecodeState, encoded: Any, options: GenerationOptions, sample: int
    ) -> list[int]:
        """Run the prompt through the model's own forward (as generate's first step does), copy
        its keys/values into the static cache, set this call's buffers, return the first tokens."""
        import torch

        from .eager import forward_cache_keyword

        model, buffers = self.loaded.model, state.buffers
        device = torch.device(self.device)
        ids = encoded["input_ids"].to(device)
        mask = encoded["attention_mask"].to(device)
        width = int(ids.shape[1])
        positions = mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(mask == 0, 0)
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        with planless_attention():  # a new prompt length would build a cuDNN plan
            output = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{forward_cache_keyword(model): cache},
            )
        layers = getattr(cache, "layers", None)
        if not layers or getattr(layers[0], "keys", None) is None:
            raise RuntimeError("this transformers release's DynamicCache has no per-layer keys")
        for index, layer in enumerate(layers):
            buffers.keys[index][:, :, :width].copy_(layer.keys)
            buffers.values[index][:, :, :width].copy_(layer.values)
        logits = output.logits[:, -1, :]
        del output, cache, layers
        buffers.valid.zero_()
        buffers.valid[:, :width].copy_(mask.bool())
        self._set_sampling(buffers, options, sample)
        picked = self._pick_first(logits, self._buffers_for(state, sample), sample)
        buffers.tokens.copy_(picked.unsqueeze(-1))
        buffers.positions.copy_(mask.sum(dim=1, keepdim=True))
        buffers.slot.fill_(width)
        return [int(t) for t in picked.tolist()]

    def _set_sampling(self, buffers: Any, options: GenerationOptions, sample: int) -> None:
        buffers.bias.zero_()
        if options.ignore_eos:  # generate's min_new_tokens: end-of-sequence is never picked
            buffers.bias[self._eos] = float("-inf")
        if sample:
            settings = options.sampling()
            buffers.temperature.fill_(float(settings["temperature"]))
            buffers.top_p.fill_(float(settings["top_p"]))
            buffers.top_k.fill_(int(settings["top_k"] or sample))

    def _pick_first(self, logits: Any, buffers: Any, sample: int) -> Any:
        if not sample:
            return qwen3_step.pick_greedy(logits, buffers)
        buffers.noise.uniform_()
        return qwen3_step.pick_sampled(logits, buffers)

    def _decode(
        self,
        step: Callable[[], Any],
        tokens: Any,
        run: DecodeRun,
        options: GenerationOptions,
        streamed: TextStream | None,
        started: float,
    ) -> None:
        reader = TokenReader(tokens)
        for _ in range(options.max_new_tokens - 1):
            step()
            rows = reader.queued()
            if rows is not None:
                run.note([r[0] for r in rows], self._eos, options, started)
                if streamed is not None:
                    streamed.update(run.ids[0])
                if run.done(options):
                    break
            decode_step_done()  # `%qwen3 --stop` from another thread ends the call here
        else:
            rows = reader.drain()
            if rows is not None:
                run.note([r[0] for r in rows], self._eos, options, started)
        reader.drain()


def _graphs_built(graphs: int, cache_hits: int) -> str:
    """How a warm-up got its graphs: compiled, loaded from the disk cache, or none needed (this
    kernel's torch.compile already holds them, e.g. after `--eager` rebuilt the buffers)."""
    if graphs == 0:
        return "nothing new to compile"
    noun = "graph" if graphs == 1 else "graphs"
    if cache_hits <= 0:
        return f"{graphs} {noun} compiled"
    if cache_hits >= graphs:  # a graph can count twice: its autograd and its inductor entry
        return f"{graphs} {noun} loaded from the compile cache"
    return f"{graphs} {noun}, some loaded from the compile cache, the rest compiled"


class _Unavailable(Exception):
    """The fast path failed (said once); the call goes to the eager engine."""


class _OutOfMemory(Exception):
    def __init__(self, reason: str, new_tokens: int, shape: str, held_bytes: int) -> None:
        super().__init__(reason)
        self.reason, self.new_tokens = reason, new_tokens
        self.shape, self.held_bytes = shape, held_bytes

    def hint(self, budget: int | None) -> str:
        """What to do, for the fast path: its cache has a fixed size (4,096 tokens for a single
        call, whatever --max-new-tokens says), so a shorter answer would not have helped."""
        eager = (
            f"decode with --eager (the fast path needs a {format_bytes(self.held_bytes)} decode "
            f"cache for {self.shape} tokens; --eager's grows with the answer)"
        )
        if budget is not None and "memory budget" in self.reason:
            return f"raise --memory-budget, or {eager}"
        return f"{eager}, or run %qwen3_clean --verbose to see what else holds memory"
