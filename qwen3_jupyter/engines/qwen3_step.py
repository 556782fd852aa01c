"""One decode step of a Qwen3 model, written against its modules' weights: forward + sampling.

Why not call the model's own `forward`: its cache and mask plumbing changes from one transformers
release to the next (cache classes, `cache_position`, keyword names), and it does work per token
that a fixed-shape step does not need. This step uses the model's own submodules (projections,
RMSNorms, MLPs, rotary embedding, head), so the arithmetic is theirs, and only the attention over
the static cache is written here (the same arithmetic as transformers' eager attention: scores in
the model's dtype, softmax in float32).

Everything the step reads or advances lives in tensors with fixed shapes and addresses
(`DecodeBuffers`), so one call can be compiled once per shape and captured as one CUDA graph:
replaying it embeds the last token, attends over the cache, writes the new key/value, samples the
next token and moves the position on, with no Python in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("qwen3",)


class UnsupportedModel(Exception):
    """The loaded model is not one this step implements (the eager path still serves it)."""


def check_supported(model: Any) -> None:
    """Raise UnsupportedModel unless `model` is a plain Qwen3 causal LM this step reproduces."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(f"the fast path implements Qwen3 models, not {kind!r}")
    if getattr(config, "attention_bias", False):
        raise UnsupportedModel("the fast path does not implement attention biases")
    layer_types = getattr(config, "layer_types", None) or ()
    if any(kind != "full_attention" for kind in layer_types):
        raise UnsupportedModel("the fast path does not implement sliding-window layers")
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        raise UnsupportedModel("the model does not have the Qwen3 module layout")


@dataclass
class DecodeBuffers:
    """The fixed tensors one decode shape works in; the step reads and advances them in place.

    `tokens` (B, 1): the last token of each row, replaced by the sampled one.
    `positions` (B, 1): each row's rotary position of `tokens`, advanced by one.
    `slot` (1,): the cache index the next key/value goes to (shared by every row).
    `valid` (B, S): which cache slots each row may attend to (left padding stays False).
    `keys` / `values`: one (B, kv_heads, S, head_dim) tensor per layer — the static KV cache.
    `bias` (V,): added to the logits (-inf on end-of-sequence ids while they are suppressed).
    `temperature`, `top_p` (1,) and `top_k` (1,) long: sampling settings, as tensors so a
    new value never needs a new graph. `noise` (B, K): uniform noise drawn before each step.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    slot: torch.Tensor
    valid: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    bias: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    noise: torch.Tensor

    @property
    def cache_bytes(self) -> int:
        return sum(int(t.nbytes) for t in (*self.keys, *self.values))

    @property
    def held_bytes(self) -> int:
        """Every byte these buffers hold: the cache plus the per-row state and the logit bias
        (the bias alone is 0.6 MiB at Qwen3's vocabulary), so a figure named "kept" is all of it."""
        state = (self.tokens, self.positions, self.slot, self.valid, self.bias)
        settings = (self.temperature, self.top_p, self.top_k, self.noise)
        return self.cache_bytes + sum(int(t.nbytes) for t in (*state, *settings))


def allocate(
    model: Any, batch: int, length: int, top_k_width: int, device: torch.device
) -> DecodeBuffers:
    """Zeroed buffers for `batch` rows and a cache of `length` tokens (the memory kept)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = config.num_key_value_heads
    dtype = model.lm_head.weight.dtype
    shape = (batch, kv_heads, length, head_dim)
    layers = config.num_hidden_layers

    def zeros(*size: int, kind: torch.dtype = torch.long) -> torch.Tensor:
        return torch.zeros(size, dtype=kind, device=device)

    return DecodeBuffers(
        tokens=zeros(batch, 1),
        positions=zeros(batch, 1),
        slot=zeros(1),
        valid=zeros(batch, length, kind=torch.bool),
        keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
        values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
        bias=zeros(int(model.lm_head.weight.shape[0]), kind=torch.float32),
        temperature=torch.ones(1, dtype=torch.float32, device=device),
        top_p=torch.ones(1, dtype=torch.float32, device=device),
        top_k=zeros(1),
        noise=torch.full((batch, max(1, top_k_width)), 0.5, dtype=torch.float32, device=device),
    )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def start_step(
    model: Any, buffers: DecodeBuffers
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed `buffers.tokens` and open their cache slot: (hidden, cos, sin, allowed)."""
    inner = model.model
    hidden = inner.embed_tokens(buffers.tokens)  # (B, 1, H)
    cos, sin = inner.rotary_emb(hidden, buffers.positions)  # (B, 1, D)
    buffers.valid.index_fill_(1, buffers.slot, True)
    allowed = buffers.valid[:, None, None, :]  # (B, 1, 1, S)
    return hidden, cos.unsqueeze(1), sin.unsqueeze(1), allowed


def layer_step(
    layer: Any,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    allowed: torch.Tensor,
    slot: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """One decoder layer for one new token per row: its key/value go to `slot` of this layer's
    cache, its query attends over the slots `allowed`. Every layer has the same shapes, so one
    compiled graph serves them all (the layer's weights are the graph's inputs)."""
    attention = layer.self_attn
    head_dim = attention.head_dim
    batch = hidden.shape[0]
    normed = layer.input_layernorm(hidden)
    query = attention.q_norm(attention.q_proj(normed).view(batch, 1, -1, head_dim))
    key = attention.k_norm(attention.k_proj(normed).view(batch, 1, -1, head_dim))
    value = attention.v_proj(normed).view(batch, 1, -1, head_dim)
    query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    query = query * cos + _rotate_half(query) * sin
    key = key * cos + _rotate_half(key) * sin
    keys.index_copy_(2, slot, key.to(keys.dtype))
    values.index_copy_(2, slot, value.to(values.dtype))
    kv_heads = keys.shape[1]
    grouped = query.reshape(batch, kv_heads, -1, head_dim)  # (B, kv, groups, D)
    scores = torch.matmul(grouped, keys.transpose(2, 3)) * attention.scaling
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
    attended = torch.matmul(weights, values).reshape(batch, 1, -1)
    hidden = hidden + attention.o_proj(attended)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def pick_greedy(logits: torch.Tensor, buffers: DecodeBuffers) -> torch.Tensor:
    """The most likely token per row (first index on ties, like `argmax` in generate)."""
    return torch.argmax(logits.float() + buffers.bias, dim=-1)


def pick_sampled(logits: torch.Tensor, buffers: DecodeBuffers) -> torch.Tensor:
    """Sample per row with temperature, top-k and top-p, in generate's order.

    Top-k keeps the `buffers.noise.shape[1]` best candidates (a static width) and masks those
    ranked at or past `top_k`; top-p then drops the tail whose cumulative probability is already
    at `top_p`; the choice among the rest is a Gumbel-max draw with the step's noise.
    """
    width = buffers.noise.shape[1]
    scores = (logits.float() + buffers.bias) / buffers.temperature
    best, index = torch.topk(scores, width, dim=-1)
    rank = torch.arange(width, device=logits.device)
    best = best.masked_fill(rank >= buffers.top_k, float("-inf"))
    probs = torch.softmax(best, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs
    best = best.masked_fill(before >= buffers.top_p, float("-inf"))
    noise = buffers.noise.clamp(1e-10, 1.0 - 1e-7)
    choice = torch.argmax(best - torch.log(-torch.log(noise)), dim=-1, keepdim=True)
    return index.gather(-1, choice).squeeze(-1)


def finish_step(
    model: Any, buffers: DecodeBuffers, hidden: torch.Tensor, greedy: bool
) -> torch.Tensor:
    """The next token of every row from the last layer's output; tokens, positions and slot
    advance in place."""
    logits = model.lm_head(model.model.norm(hidden)[:, -1, :])
    picked = pick_greedy(logits, buffers) if greedy else pick_sampled(logits, buffers)
    buffers.tokens.copy_(picked.unsqueeze(-1))
    buffers.positions.add_(1)
    buffers.slot.add_(1)
    return buffers.tokens


@dataclass(frozen=True)
class StepParts:
    """The three functions a step is made of, plain or each compiled on its own.

    Why not compile the whole step: tracing and compiling 28 unrolled layers took 32 s on an
    H100, and the next kernel's first call, loading them from the disk cache, 11 s; the layers
    all have one shape, so one layer's graph serves every layer (and every sampler: only
    `finish` differs between greedy and sampling). A CUDA graph capture of the step still
    records every layer's kernels, so a token is still one replay."""

    start: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    layer: Callable[..., torch.Tensor]
    finish: Callable[..., torch.Tensor]


PLAIN_STEP = StepParts(start_step, layer_step, finish_step)


def compiled_parts(compile: Callable[[Callable[..., Any]], Any]) -> StepParts:
    """`PLAIN_STEP` with each part passed through `compile` (e.g. torch.compile)."""
    return StepParts(compile(start_step), compile(layer_step), compile(finish_step))


def decode_step(
    model: Any, buffers: DecodeBuffers, greedy: bool, parts: StepParts = PLAIN_STEP
) -> torch.Tensor:
    """One token for every row: forward, sample, advance tokens/positions/slot in place."""
    hidden, cos, sin, allowed = parts.start(model, buffers)
    for layer, keys, values in zip(model.model.layers, buffers.keys, buffers.values, strict=True):
        hidden = parts.layer(layer, hidden, cos, sin, allowed, buffers.slot, keys, values)
    return parts.finish(model, buffers, hidden, greedy)
