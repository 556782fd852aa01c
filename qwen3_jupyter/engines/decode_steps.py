"""Building a fast decode shape's step: its buffers, the step compiled with torch.compile and,
on CUDA, captured as a CUDA graph — each built once per shape and kept on the shape's state.

Kept apart from `fast`, which runs calls through these steps: `StepBuilding` is the engine's
half that turns a shape into a callable, with the fallbacks (uncompiled, no graph) it takes
when compiling or capturing fails."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..interrupts import children_spared, interrupt_deferred, interrupts_that_land
from ..out_of_memory import allocation_failures_as_oom
from . import qwen3_step
from .compile_setup import (
    TUNING,
    compile_cache_dir,
    compile_cache_hits,
    compiles_so_far,
    compiling,
    import_compiler,
    remember_compiled,
    remove_empty_objects,
)
from .cuda_graphs import failure_text, first_line, pool_bytes, record
from .decode_shapes import SAMPLE_WIDTH

Notify = Callable[[str], None]


@dataclass
class DecodeState:
    """The buffers of one (batch, cache length) shape and the steps built on them."""

    batch: int
    length: int
    buffers: qwen3_step.DecodeBuffers
    steps: dict[int, Callable[[], Any]] = field(default_factory=dict)
    """Sample width (0: greedy) -> a callable that runs one step (a graph replay on CUDA)."""
    wide: dict[int, qwen3_step.DecodeBuffers] = field(default_factory=dict)
    """Buffers for sample widths wider than the default: the same cache, noise of their own."""
    graphs: list[Any] = field(default_factory=list)
    pool: Any = None
    """This shape's CUDA graph memory pool, shared by its greedy and sampling graphs (they never
    run at once and keep nothing in it between replays); dropping the shape frees all of it."""
    graph_bytes: int = 0
    """Memory in this shape's graph pool, measured after each capture (replays add none)."""
    setup_seconds: float = 0.0
    """Time spent compiling and capturing this shape's steps (not generation time)."""

    @property
    def held_bytes(self) -> int:
        """The cache, its per-row state, and the noise of any wider sampler (not the graphs).
        The samplers are copied first: the gauge's thread asks while a call may add one."""
        wide = list(self.wide.values())
        return self.buffers.held_bytes + sum(int(w.noise.nbytes) for w in wide)


class StepBuilding:
    """The step-building half of `FastEngine` (its attributes are the engine's)."""

    loaded: Any
    device: str
    notify: Notify
    status: Callable[[str], None] | None
    compile: bool
    tune: bool
    compiled_step: qwen3_step.StepParts | None
    compile_seconds: list[tuple[str, float]]
    compiles: int
    capture: bool
    _capture_stream: Any

    def _buffers_for(self, state: DecodeState, sample: int) -> qwen3_step.DecodeBuffers:
        """The state's buffers as the sampler of width `sample` sees them: a wider top-k gets
        noise of its own (a captured graph keeps writing to the noise it was captured with)."""
        import torch

        buffers = state.buffers
        if sample <= buffers.noise.shape[1]:
            return buffers
        wide = state.wide.get(sample)
        if wide is None:
            noise = torch.full(
                (state.batch, sample), 0.5, dtype=buffers.noise.dtype, device=buffers.noise.device
            )
            wide = state.wide[sample] = replace(buffers, noise=noise)
        return wide

    def _step_for(self, state: DecodeState, sample: int) -> Callable[[], Any]:
        """The callable that runs one decode step of `state` with sampler `sample`, built on
        first use: compiled (unless switched off or failed), captured as a graph on CUDA."""
        step = state.steps.get(sample)
        if step is not None:
            return step
        shape = f"batch {state.batch} × cache {state.length}" + _sampler_label(sample)
        started = time.perf_counter()
        try:
            if self.compile and self.status is not None:
                self.status(
                    f"compiling the decode step for {shape} (once per kernel; cached on disk)…"
                )
            direct = self._direct(state, sample, compiled=self.compile)
            with self._rehearsal(state):  # runs that build the step leave no trace in the call
                if self.compile and not self._compile_first(direct, shape):
                    direct = self._direct(state, sample, compiled=False)
                step = self._capture(state, direct) if self.device.startswith("cuda") else direct
        finally:  # counted also when an interrupt ends the build
            state.setup_seconds += time.perf_counter() - started
        if step is direct:
            step = _whole_steps_only(direct)
        state.steps[sample] = step
        return step

    def _direct(self, state: DecodeState, sample: int, compiled: bool) -> Callable[[], Any]:
        """One step as a plain call: fresh noise when sampling, then the (compiled) step."""
        parts = self._compiled() if compiled else qwen3_step.PLAIN_STEP
        model, buffers, greedy = self.loaded.model, self._buffers_for(state, sample), sample == 0

        def direct() -> Any:
            if not greedy:
                buffers.noise.uniform_()
            return qwen3_step.decode_step(model, buffers, greedy, parts)

        return direct

    def _compiled(self) -> qwen3_step.StepParts:
        if self.compiled_step is None:
            import torch

            import_compiler(self.device)
            options = dict(TUNING) if self.tune else None
            self.compiled_step = qwen3_step.compiled_parts(
                lambda function: torch.compile(
                    function, fullgraph=True, dynamic=False, options=options
                )
            )
        return self.compiled_step

    def _compile_first(self, direct: Callable[[], Any], shape: str) -> bool:
        """Run the compiled step once now (that is when torch.compile works), timing it and
        counting new graphs. On failure say so, switch compiling off, and return False."""
        import torch

        before, hits, started = compiles_so_far(), compile_cache_hits(), time.perf_counter()
        step = self._step_key(shape)
        try:
            # Running out is not a failed compile; an interrupt ends it even where Python would
            # drop it (in one of the finalizers torch.compile runs all the time).
            with (
                allocation_failures_as_oom(),
                interrupts_that_land(),
                compiling(step),
                children_spared(),  # an interrupt killed g++ mid-write, breaking the cache
            ):
                direct()
        except (KeyboardInterrupt, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            self.compile = False
            self.compiled_step = None
            removed = remove_empty_objects(compile_cache_dir())
            repaired = (
                f"; removed {removed} empty compiled file{'s' if removed != 1 else ''} from the "
                "compile cache (an interrupted compile's): the next kernel compiles again"
                if removed
                else ""
            )
            self.notify(
                f"compiling the decode step failed ({first_line(exc)}); "
                f"decoding with the static cache, uncompiled{repaired}"
            )
            return False
        seconds = time.perf_counter() - started
        new = compiles_so_far() - before
        self.compiles += new
        if new:
            remember_compiled(step)
            self.compile_seconds.append((shape, seconds))
            how = (
                "loaded the compiled decode step from the cache"
                if compile_cache_hits() > hits
                else "compiled the decode step"
            )
            self.notify(
                f"{how} for {shape} in {seconds:.1f} s (once per kernel, not counted in the "
                f"figures; cache: {compile_cache_dir()})"
            )
        return True

    def _step_key(self, shape: str) -> str:
        """What a compiled step depends on: its shape, the model, the dtype, the device and
        whether it was tuned (inductor caches the two apart)."""
        import torch

        device = self.device
        if device.startswith("cuda"):
            index = torch.device(device).index
            capability = torch.cuda.get_device_capability(index)
            device = f"{torch.cuda.get_device_name(index)} sm{capability[0]}{capability[1]}"
        tuned = " · tuned" if self.tune else ""
        return f"{shape} · {self.loaded.name} {self.loaded.dtype} · {device}{tuned}"

    @contextlib.contextmanager
    def _rehearsal(self, state: DecodeState) -> Iterator[None]:
        """Compiling runs the step once and capturing runs it twice more (warm-up): put back
        the tokens, positions, slot, mask and random state those runs advanced, so the call's
        own first step still comes next and a seed still gives the same answer. (Their cache
        writes land in slots the call writes again before reading them.)"""
        import torch

        saved = snapshot_call_state(state.buffers)
        devices = []
        if self.device.startswith("cuda"):
            index = torch.device(self.device).index
            devices = [torch.cuda.current_device() if index is None else index]
        try:
            with torch.random.fork_rng(devices=devices):
                yield
        finally:
            restore_call_state(state.buffers, saved)

    def _capture(self, state: DecodeState, direct: Callable[[], Any]) -> Callable[[], Any]:
        """Capture one step as a CUDA graph (after warm-up runs on a side stream); replaying
        it is the step. A failed capture falls back to calling the step; running out of memory
        while capturing is an out-of-memory error, not a failed capture."""
        import torch

        if not self.capture:
            return direct
        reserved_before = torch.cuda.memory_reserved()
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream()
        if state.pool is None:
            state.pool = torch.cuda.graph_pool_handle()
        try:
            with allocation_failures_as_oom():
                graph = record(direct, self._capture_stream, state.pool)
        except (KeyboardInterrupt, torch.OutOfMemoryError):
            self._after_failed_capture(state)
            raise
        except Exception as exc:
            self._after_failed_capture(state)
            self.capture = False
            self.notify(
                f"capturing the decode step as a CUDA graph failed ({failure_text(exc)}); "
                "running it without a graph in this kernel"
            )
            return direct
        grown = state.graph_bytes + max(0, torch.cuda.memory_reserved() - reserved_before)
        state.graphs.append(graph)
        state.graph_bytes = pool_bytes(state.pool, fallback=grown)
        return graph.replay

    @staticmethod
    def _after_failed_capture(state: DecodeState) -> None:
        """A shape with no graph yet takes a new pool next time: the failed capture gave this
        one up (`record` put torch back), and reusing its id trips an assert."""
        if not state.graphs:
            state.pool = None


def _sampler_label(sample: int) -> str:
    """How a shape's notices name its sampler: greedy (nothing), the default sampler, or a wider
    top-k (which builds a sampler of its own: say so, or the same shape seems built twice)."""
    if not sample:
        return ""
    return " (sampling)" if sample <= SAMPLE_WIDTH else f" (sampling, top-k up to {sample})"


def _whole_steps_only(step: Callable[[], Any]) -> Callable[[], Any]:
    """`step`, with an interrupt held until the step has run (a graph replay needs no such care).

    Why: an interrupt that lands while torch.compile checks whether its compiled code still
    applies is lost: dynamo takes the failed check for a changed input and compiles again
    (measured on the CPU: the interrupt ignored, a new graph, 9 s). Held to the step's end, it
    stops the decode between two whole steps."""

    def run() -> Any:
        with interrupt_deferred():
            return step()

    return run


def snapshot_call_state(buffers: Any) -> list[Any]:
    """The per-call state a warm-up or capture advances (not the cache: it is overwritten)."""
    return [t.clone() for t in (buffers.tokens, buffers.positions, buffers.slot, buffers.valid)]


def restore_call_state(buffers: Any, saved: list[Any]) -> None:
    for target, value in zip(
        (buffers.tokens, buffers.positions, buffers.slot, buffers.valid), saved, strict=True
    ):
        target.copy_(value)
