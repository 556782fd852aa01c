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


def decode_logits(model: Any, buffers: DecodeBuffers) -> torch.Tensor:
    """Logits (B, V) for `buffers.tokens`, writing their keys/values at `buffers.slot`."""
    inner = model.model
    batch = buffers.tokens.shape[0]
    hidden = inner.embed_tokens(buffers.tokens)  # (B, 1, H)
    cos, sin = inner.rotary_emb(hidden, buffers.positions)  # (B, 1, D)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    buffers.valid.index_fill_(1, buffers.slot, True)
    allowed = buffers.valid[:, None, None, :]  # (B, 1, 1, S)
    for index, layer in enumerate(inner.layers):
        attention = layer.self_attn
        head_dim = attention.head_dim
        normed = layer.input_layernorm(hidden)
        query = attention.q_norm(attention.q_proj(normed).view(batch, 1, -1, head_dim))
        key = attention.k_norm(attention.k_proj(normed).view(batch, 1, -1, head_dim))
        value = attention.v_proj(normed).view(batch, 1, -1, head_dim)
        query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        query = query * cos + _rotate_half(query) * sin
        key = key * cos + _rotate_half(key) * sin
        keys, values = buffers.keys[index], buffers.values[index]
        keys.index_copy_(2, buffers.slot, key.to(keys.dtype))
        values.index_copy_(2, buffers.slot, value.to(values.dtype))
        kv_heads = keys.shape[1]
        grouped = query.reshape(batch, kv_heads, -1, head_dim)  # (B, kv, groups, D)
        scores = torch.matmul(grouped, keys.transpose(2, 3)) * attention.scaling
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
        attended = torch.matmul(weights, values).reshape(batch, 1, -1)
        hidden = hidden + attention.o_proj(attended)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    hidden = inner.norm(hidden)
    logits: torch.Tensor = model.lm_head(hidden[:, -1, :])
    return logits


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


def decode_step(model: Any, buffers: DecodeBuffers, greedy: bool) -> torch.Tensor:
    """One token for every row: forward, sample, advance tokens/positions/slot in place."""
    logits = decode_logits(model, buffers)
    picked = pick_greedy(logits, buffers) if greedy else pick_sampled(logits, buffers)
    buffers.tokens.copy_(picked.unsqueeze(-1))
    buffers.positions.add_(1)
    buffers.slot.add_(1)
    return buffers.tokens
