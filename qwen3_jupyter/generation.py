"""Generate with the loaded model: prompt building, streaming, thinking split, chat history.

Generation runs on the kernel's main thread so that an interrupt (Ctrl-C, the notebook's stop
button) lands in it directly; the streamer only records tokens and, at most every
`stream_interval` seconds, hands the decoded text to the caller.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .memory import format_bytes, process_rss
from .models import LoadedModel, release_allocator_cache

THINK_END = "</think>"
THINK_START = "<think>"
# Qwen3's recommended sampling (model card): thinking vs non-thinking mode.
THINKING_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
NON_THINKING_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
DEFAULT_MAX_NEW_TOKENS = 512


class GenerationOOM(Exception):
    """The device ran out of memory during generation; memory has already been released."""


@dataclass(frozen=True)
class GenerationOptions:
    """What a caller may set for one generation; None means Qwen3's recommended value."""

    think: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None
    system: str | None = None
    greedy: bool = False
    ignore_eos: bool = False

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for `generate` that select the decoding strategy."""
        if self.greedy:
            return {"do_sample": False}
        base = THINKING_SAMPLING if self.think else NON_THINKING_SAMPLING
        return {
            "do_sample": True,
            "temperature": base["temperature"] if self.temperature is None else self.temperature,
            "top_p": base["top_p"] if self.top_p is None else self.top_p,
            "top_k": base["top_k"] if self.top_k is None else self.top_k,
        }


@dataclass(frozen=True)
class Result:
    """One call's outcome. Plain values only: it holds no tensors and keeps no memory alive."""

    prompt: str
    answer: str
    thinking: str
    model: str
    device: str
    think: bool
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    tokens_per_s: float
    peak_memory_bytes: int | None
    memory_kind: str
    stop_reason: str
    thinking_finished: bool
    memory_freed_bytes: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.stop_reason == "interrupted"

    @property
    def text(self) -> str:
        """The raw completion: thinking block and answer as the model wrote them."""
        if not self.think:
            return self.answer
        closing = THINK_END if self.thinking_finished else ""
        return f"{THINK_START}{self.thinking}{closing}{self.answer}"


@dataclass
class Conversation:
    """The per-kernel chat history used by `--chat`."""

    messages: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.messages.clear()


def build_messages(
    prompt: str, options: GenerationOptions, history: list[dict[str, str]] | None = None
) -> list[dict[str, str]]:
    """Chat messages for one call: optional system turn, prior turns, then the prompt."""
    messages: list[dict[str, str]] = []
    if options.system:
        messages.append({"role": "system", "content": options.system})
    messages.extend(m for m in (history or []) if m["role"] != "system")
    messages.append({"role": "user", "content": prompt})
    return messages


def split_thinking(text: str, think: bool) -> tuple[str, str, bool]:
    """Split a completion into (thinking, answer, thinking_finished) at the first `</think>`.

    With thinking off the whole text is the answer. With thinking on and no `</think>` yet
    (the token budget ran out mid-thought) everything is thinking and the answer is empty.
    """
    if not think:
        return "", text.strip(), True
    body = text.removeprefix(THINK_START) if text.lstrip().startswith(THINK_START) else text
    body = body.lstrip().removeprefix(THINK_START)
    if THINK_END not in body:
        return body.strip(), "", False
    thinking, answer = body.split(THINK_END, 1)
    return thinking.strip(), answer.strip(), True


def current_memory(device: str) -> tuple[int, str]:
    """What this process holds on `device` now, and what the figure is."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.memory_reserved(torch.device(device))), "CUDA reserved"
    return process_rss(), "host RSS"


class MemoryGuard:
    """Measures what generation really holds after every step, and enforces a budget.

    Used as a stopping criterion (it never stops generation by itself): it sums the KV
    cache's key/value storages, the logits and the ids, keeps the peak, samples host RSS on
    CPU, and raises torch.OutOfMemoryError when a budget is set and exceeded — the error the
    CUDA allocator raises, so one out-of-memory path serves a GPU and a budgeted CPU alike.
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
        from transformers.generation import utils

        cache_name = (
            "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else ("past_key_values")
        )
        return {cache_name: self.cache, "stopping_criteria": StoppingCriteriaList([self])}

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
        if self.budget is not None and used > self.budget:
            raise torch.OutOfMemoryError(
                f"generation tensors hold {format_bytes(used)}, over the memory budget of "
                f"{format_bytes(self.budget)}"
            )
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def release(self) -> None:
        """Drop the cache so its tensors can be freed."""
        self.cache = None


class _Streamer:
    """transformers streamer: records generated ids, emits text periodically."""

    def __init__(
        self,
        tokenizer: Any,
        device: str,
        on_text: Callable[[str], None] | None,
        interval: float,
    ) -> None:
        self.tokenizer = tokenizer
        self.device = device
        self.on_text = on_text
        self.interval = interval
        self.ids: list[int] = []
        self._prompt_seen = False
        self._last_emit = 0.0
        self.memory_at_end: int | None = None

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        now = time.perf_counter()
        if self.on_text is not None and now - self._last_emit >= self.interval:
            self._last_emit = now
            self.on_text(self.decode())

    def end(self) -> None:
        self.memory_at_end = current_memory(self.device)[0]

    def decode(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))


def generate(
    loaded: LoadedModel,
    prompt: str,
    options: GenerationOptions,
    history: list[dict[str, str]] | None = None,
    on_text: Callable[[str], None] | None = None,
    stream_interval: float = 0.1,
    memory_budget: int | None = None,
) -> Result:
    """Generate one answer, streaming text to `on_text`, then release what generation left.

    An interrupt stops generation and returns the partial answer with stop_reason
    'interrupted'. Running out of device memory releases memory and raises GenerationOOM
    (after the failing frames are gone, so the memory can really be returned).
    """
    import torch

    tokenizer, model, device = loaded.tokenizer, loaded.model, loaded.device
    messages = build_messages(prompt, options, history)
    prompt_text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=options.think
    )
    inputs = tokenizer(prompt_text, return_tensors="pt").to(device)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    streamer = _Streamer(tokenizer, device, on_text, stream_interval)
    guard = MemoryGuard(model, memory_budget)
    kwargs = prepare_generate(tokenizer, device, options, guard, streamer=streamer)
    stop_reason = "length"
    oom_reason: str | None = None
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            model.generate(**inputs, **kwargs)
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    except torch.OutOfMemoryError as exc:
        oom_reason = (str(exc).strip().splitlines() or ["out of memory"])[0][:200]
    latency = time.perf_counter() - started
    del inputs
    guard.release()
    if oom_reason is not None:
        # Outside the except block: the failing frames (and their tensors) are gone now.
        freed = release_after_generation(device, current_memory(device)[0])
        hint = (
            "raise --memory-budget or lower --max-new-tokens"
            if memory_budget is not None and "memory budget" in oom_reason
            else "lower --max-new-tokens, run %qwen3_clean --verbose to see what holds memory, "
            "or use --device cpu"
        )
        raise GenerationOOM(
            f"out of memory on {device} after {len(streamer.ids)} new tokens ({oom_reason}); "
            f"freed {format_bytes(freed)}: {hint}"
        )
    ids = streamer.ids
    if stop_reason != "interrupted" and ids and ids[-1] in eos_ids(model, tokenizer):
        stop_reason = "eos"
    result = completed_result(
        loaded,
        prompt,
        options,
        streamer.decode(),
        prompt_tokens,
        len(ids),
        latency,
        guard,
        stop_reason,
    )
    freed = release_after_generation(device, streamer.memory_at_end)
    return replace(result, memory_freed_bytes=freed)


def completed_result(
    loaded: LoadedModel,
    prompt: str,
    options: GenerationOptions,
    text: str,
    prompt_tokens: int,
    completion_tokens: int,
    latency: float,
    guard: MemoryGuard,
    stop_reason: str,
) -> Result:
    """The Result of one finished completion (single or one row of a batch).

    Peak memory is torch's peak allocated bytes on CUDA, else the host RSS the guard sampled.
    """
    import torch

    thinking, answer, finished = split_thinking(text, options.think)
    on_cuda = loaded.device.startswith("cuda")
    if on_cuda:
        peak = int(torch.cuda.max_memory_allocated(torch.device(loaded.device)))
    return Result(
        prompt=prompt,
        answer=answer,
        thinking=thinking,
        model=loaded.name,
        device=loaded.device,
        think=options.think,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_s=latency,
        tokens_per_s=completion_tokens / latency if latency > 0 else 0.0,
        peak_memory_bytes=peak if on_cuda else guard.peak_rss,
        memory_kind="CUDA allocated" if on_cuda else "host RSS",
        stop_reason=stop_reason,
        thinking_finished=finished,
    )


def prepare_generate(
    tokenizer: Any, device: str, options: GenerationOptions, guard: MemoryGuard, **extra: Any
) -> dict[str, Any]:
    """`generate` keyword arguments for `options`; seeds the RNG and resets CUDA peak counters.

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
    if options.seed is not None:
        torch.manual_seed(options.seed)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    return kwargs


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends generation for this model and tokenizer."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def release_after_generation(device: str, memory_at_end: int | None) -> int | None:
    """Free what generation left (young cycles, cached allocator blocks); return bytes freed.

    'Freed' compares what the process held when the last token was produced (KV cache and
    logits still alive) with what it holds after the release. `generate` leaves no cycle that
    holds a tensor (measured: live tensor bytes are the same before and after a full
    collection), so a young-generation pass suffices; a full one costs ~200 ms once
    transformers is imported, which would dominate short calls. `%qwen3_clean` does the full one.
    """
    gc.collect(1)
    release_allocator_cache()
    if memory_at_end is None:
        return None
    return max(0, memory_at_end - current_memory(device)[0])
