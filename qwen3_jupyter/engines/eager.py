"""The eager engine: transformers' own `generate` with a dynamic KV cache, as the library ships.

Nothing is kept between calls: the cache grows with the answer and is freed after it. This is the
reference the fast path is checked against (`%qwen3 --eager`), and the path for CPUs, for models
the fast path does not implement, and for when compiling fails.

Generation runs on the kernel's main thread so that an interrupt (Ctrl-C, the notebook's stop
button) lands in it directly; the streamer only records tokens and, at most every
`stream_interval` seconds, hands the decoded text to the caller.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from ..generation import (
    Completion,
    GenerationOptions,
    Result,
    completed_result,
    current_memory,
    enforce_budget,
    eos_ids,
    oom_error,
    oom_hint,
    oom_reason,
    prompt_text,
    release_after_generation,
    until_eos,
)
from ..memory import process_rss
from ..model_use import decode_step_done
from ..out_of_memory import allocation_failures_as_oom
from ..stream_pace import next_wait, settled
from .attention import planless_attention
from .base import TextCallback
from .local import LocalEngine, decodes, holds_model
from .seeding import seeded


class MemoryGuard:
    """Measures what generation really holds after every step, and enforces a budget.

    Used as a stopping criterion (it never stops generation by itself): it sums the KV
    cache's key/value storages, the logits and the ids, keeps the peak, samples host RSS on
    CPU, and raises torch.OutOfMemoryError when a budget is set and exceeded.
    """

    def __init__(self, model: Any, budget: int | None = None) -> None:
        from transformers import DynamicCache

        self.cache: Any = DynamicCache(config=model.config)
        self.budget = budget
        self.peak_tensor_bytes = 0
        self.peak_rss = process_rss()

    def generate_kwargs(self) -> dict[str, Any]:
        """Arguments that hand `generate` this guard and the cache it watches."""
        from transformers import StoppingCriteriaList

        return {cache_keyword(): self.cache, "stopping_criteria": StoppingCriteriaList([self])}

    def tensor_bytes(self, input_ids: Any, scores: Any) -> int:
        total = int(input_ids.nbytes) + (int(scores.nbytes) if scores is not None else 0)
        for layer in getattr(self.cache, "layers", ()):
            for name in ("keys", "values"):
                tensor = getattr(layer, name, None)
                if tensor is not None:
                    total += int(tensor.nbytes)
        return total

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        used = self.tensor_bytes(input_ids, scores)
        self.peak_tensor_bytes = max(self.peak_tensor_bytes, used)
        if input_ids.device.type == "cpu":
            self.peak_rss = max(self.peak_rss, process_rss())
        enforce_budget(used, self.budget)
        decode_step_done()  # `%qwen3 --stop` from another thread ends the call here
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def release(self) -> None:
        """Empty and drop the cache so its tensors are freed now, even while generate's frames
        still refer to the cache object (in the traceback of an error ending the call)."""
        for layer in getattr(self.cache, "layers", None) or ():
            layer.keys = layer.values = None
        self.cache = None


def cache_keyword() -> str:
    """The keyword `generate` and `forward` take a cache by: `cache` from transformers 5.2x
    on, `past_key_values` before."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def forward_cache_keyword(model: Any) -> str:
    """The keyword this model's `forward` takes its cache by (`cache` or `past_key_values`):
    read from its signature, since a name it does not know would silently go to **kwargs."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class _Streamer:
    """transformers streamer: records generated ids and the first token's time, emits text."""

    def __init__(
        self, tokenizer: Any, device: str, on_text: TextCallback | None, interval: float
    ) -> None:
        self.tokenizer = tokenizer
        self.device = device
        self.on_text = on_text
        self.interval = interval
        self.ids: list[int] = []
        self.first_token_at: float | None = None
        self._prompt_seen = False
        self._last_emit = 0.0
        self._wait = interval
        self._shown: str | None = None
        self.memory_at_end: int | None = None

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        if self.on_text is not None and now - self._last_emit >= self._wait:
            self._last_emit = now
            text = self.decode()
            self._wait = next_wait(self.interval, text)
            self._shown = settled(text)
            self.on_text(self._shown)

    def flush(self) -> None:
        """The whole text once more, if the last paced call did not have it all (the tokens
        after it, a character it held back): the caller's last text is the answer."""
        text = self.decode()
        if self.on_text is not None and self.ids and text != self._shown:
            self._shown = text
            self.on_text(text)

    def end(self) -> None:
        self.memory_at_end = current_memory(self.device)[0]

    def decode(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))


def prepare_generate(
    tokenizer: Any, device: str, options: GenerationOptions, guard: MemoryGuard, **extra: Any
) -> dict[str, Any]:
    """`generate` keyword arguments for `options`; resets CUDA peak counters (`seeded` seeds).

    Shared by single and batched generation so both decode exactly alike.
    """
    import torch

    kwargs: dict[str, Any] = dict(
        max_new_tokens=options.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        **guard.generate_kwargs(),
        **options.sampling(),
        **extra,
    )
    if options.ignore_eos:
        kwargs["min_new_tokens"] = options.max_new_tokens
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    return kwargs


class EagerEngine(LocalEngine):
    """transformers `generate`, dynamic cache, nothing kept between calls."""

    kind = "eager"

    @holds_model("a generation")
    @decodes
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
        """One answer, streamed; then what generation left is released.

        Running out of device memory releases memory and raises GenerationOOM (after the
        failing frames are gone, so the memory can really be returned).
        """
        import torch

        tokenizer, model, device = self.loaded.tokenizer, self.loaded.model, self.device
        text = prompt_text(tokenizer, prompt, options, history)
        self.check_text_early(text, options, chat=bool(history))
        inputs = tokenizer(text, return_tensors="pt").to(device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        self.check_positions(prompt_tokens, options, chat=bool(history))
        streamer = _Streamer(tokenizer, device, on_text, stream_interval)
        guard = MemoryGuard(model, memory_budget)
        kwargs = prepare_generate(tokenizer, device, options, guard, streamer=streamer)
        stop_reason = "length"
        failure: str | None = None
        started = time.perf_counter()
        try:
            with (
                torch.inference_mode(),
                planless_attention(),
                allocation_failures_as_oom(),
                seeded(options.seed, device),
            ):
                model.generate(**inputs, **kwargs)
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        except torch.OutOfMemoryError as exc:
            failure = oom_reason(exc)
        finally:  # an error of the caller's on_text too: its traceback must not keep the cache
            guard.release()
        latency = time.perf_counter() - started
        del inputs
        if failure is not None:
            # Outside the except block: the failing frames (and their tensors) are gone now.
            freed = release_after_generation(device, current_memory(device)[0])
            raise oom_error(device, len(streamer.ids), failure, memory_budget, freed)
        ids = streamer.ids
        if stop_reason != "interrupted" and ids and ids[-1] in eos_ids(model, tokenizer):
            stop_reason = "eos"
        first = streamer.first_token_at
        completion = Completion(
            prompt=prompt,
            text=streamer.decode(),
            prompt_tokens=prompt_tokens,
            token_ids=tuple(ids),
            latency_s=latency,
            stop_reason=stop_reason,
            time_to_first_token_s=first - started if first is not None else None,
        )
        result = completed_result(self.loaded, options, completion, self.kind, guard.peak_rss)
        # An interrupt ends generate before the streamer's end (its figure): measured now, so
        # an interrupted call's footer says what its release freed too.
        at_end = streamer.memory_at_end
        freed = release_after_generation(
            device, current_memory(device)[0] if at_end is None else at_end
        )
        streamer.flush()  # after the release: an error of the caller's leaves nothing held
        return replace(result, memory_freed_bytes=freed)

    @holds_model("a batch")
    @decodes
    def generate_chunk(
        self, prompts: list[str], options: GenerationOptions, budget: int | None
    ) -> tuple[list[Result], int]:
        """One left-padded batch through `generate`."""
        import torch

        from ..generation import ChunkInterrupted, GenerationOOM

        tokenizer, model, device = self.loaded.tokenizer, self.loaded.model, self.device
        texts = [prompt_text(tokenizer, p, options) for p in prompts]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left").to(device)
        prompt_lengths = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
        width = int(inputs["input_ids"].shape[1])
        guard = MemoryGuard(model, budget)
        kwargs = prepare_generate(tokenizer, device, options, guard)
        failure = None
        interrupted = False
        started = time.perf_counter()
        try:
            with (
                torch.inference_mode(),
                planless_attention(),
                allocation_failures_as_oom(),
                seeded(options.seed, device),
            ):
                sequences = model.generate(**inputs, **kwargs)
            new_rows = sequences[:, width:].tolist()
            del sequences
        except torch.OutOfMemoryError as exc:
            failure = oom_reason(exc)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            guard.release()
        latency = time.perf_counter() - started
        memory_before_free = current_memory(device)[0]
        del inputs
        if interrupted:  # out of the except block: the interrupted frames are gone
            raise ChunkInterrupted(guard.peak_tensor_bytes)
        if failure is not None:
            release_after_generation(device, None)
            raise GenerationOOM(failure, oom_hint(device, failure, budget))
        eos = eos_ids(model, tokenizer)
        completions = []
        for prompt, prompt_len, row in zip(prompts, prompt_lengths, new_rows, strict=True):
            ids, stop = until_eos(row, eos)
            completions.append(
                Completion(
                    prompt=prompt,
                    text=tokenizer.decode(ids, skip_special_tokens=True),
                    prompt_tokens=prompt_len,
                    token_ids=tuple(ids),
                    latency_s=latency,
                    stop_reason=stop,
                )
            )
        freed = release_after_generation(device, memory_before_free)
        results = [
            replace(
                completed_result(self.loaded, options, c, self.kind, guard.peak_rss),
                memory_freed_bytes=freed,
            )
            for c in completions
        ]
        return results, guard.peak_tensor_bytes
