"""Resolve a model id or path, pick device and dtype, and keep the one loaded model per kernel.

Resolution never touches the network unless the user opts in with
QWEN3_JUPYTER_ALLOW_DOWNLOAD=1: a missing model must end in one clear line, never a hang.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import embedded
from .asked import CALL, Asked
from .env_switches import switch, unreadable
from .hub_progress import (
    Progress,
    hub_progress_bars_off,
    let_out,
    load_report_held,
    loading_progress,
)
from .model_use import ModelUse
from .out_of_memory import out_of_memory_reason

DEFAULT_MODEL = "Qwen/Qwen3-1.7B"
MODEL_ENV = "QWEN3_JUPYTER_MODEL"
DEVICE_ENV = "QWEN3_JUPYTER_DEVICE"
DTYPE_ENV = "QWEN3_JUPYTER_DTYPE"
DOWNLOAD_ENV = "QWEN3_JUPYTER_ALLOW_DOWNLOAD"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}


class ModelError(Exception):
    """A model problem the user can fix; its message is one actionable line."""


@dataclass(frozen=True)
class ModelChoice:
    """What to load: the name the user gave, where it comes from, and on what."""

    name: str
    device: str
    dtype: str
    asked: Asked | None = field(default=None, compare=False)
    """Where `name` was asked (a message about it names that place); None: `--model`."""


@dataclass
class LoadedModel:
    """The model and tokenizer in memory, and where they came from."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    embedded: bool
    load_seconds: float = 0.0
    """How long finding (or building) and loading it took."""
    build_seconds: float = 0.0
    """The part of `load_seconds` spent building an embedded model into the cache (0 when it
    was built before): a first call's slowness, said once, is not blamed on every load."""
    build_waited: bool = False
    """`build_seconds` went to waiting for another kernel's build of it, not to building it."""


def weights_bytes(model: Any) -> int:
    """The bytes of `model`'s parameters and buffers: what a loaded model holds for good."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def choose_model(explicit: str | None = None, configured: str | None = None) -> str:
    """The model to use: flag, then environment variable, then config option, then default."""
    asked = asked_model(explicit, configured)
    return asked.value if asked is not None else DEFAULT_MODEL


def asked_model(explicit: str | None = None, configured: str | None = None) -> Asked | None:
    """The model named by the flag, the environment variable or the config option, and where."""
    return Asked.first("model", explicit, MODEL_ENV, configured)


def pick_device(override: str | None = None, configured: str | None = None) -> str:
    """`cuda` when a GPU is present, else `cpu`; an override (flag, then env, then config)
    wins if usable. An error names the one that asked (`Asked.says`)."""
    import torch

    asked = Asked.first("device", override, DEVICE_ENV, configured)
    if asked is None or asked.value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    wanted = asked.value
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"{asked.says()}: no CUDA GPU is visible here; use --device cpu")
    try:
        device = torch.device(wanted)
    except RuntimeError as exc:
        raise ModelError(
            f"{asked.says(quoted=True)} is not a device torch knows (try cpu, cuda)"
        ) from exc
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ModelError(
            f"{asked.says()}: this kernel sees {count} CUDA GPU{'s' if count != 1 else ''} "
            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}; CUDA_VISIBLE_DEVICES "
            "renumbers them from 0)"
        )
    if device.type not in ("cpu", "cuda"):  # mps, xpu…: the load failed with a traceback
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ModelError(f"{asked.says()}: no {device.type} device here; use --device cpu")
    return wanted


def same_device(a: str, b: str) -> bool:
    """Whether `a` and `b` name one device: `cpu` and `cpu:0`; `cuda` and `cuda:N` where N is
    the current GPU. Why: `--device cuda:0` after a load on the automatic `cuda` reloaded the
    model (and on the fast path compiled and captured its step again)."""
    return a == b or _device_key(a) == _device_key(b)


def _device_key(name: str) -> tuple[str, int]:
    import torch

    device = torch.device(name)
    if device.type == "cpu":
        return ("cpu", 0)
    index = device.index
    if index is None and device.type == "cuda" and torch.cuda.is_available():
        index = torch.cuda.current_device()
    return (device.type, index or 0)


def canonical_dtype(text: str) -> str:
    """The dtype name for what users type: bf16, fp16, half, fp32, torch.bfloat16, any case."""
    name = text.strip().lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(name, name)


def pick_dtype(device: str, override: str | None = None, configured: str | None = None) -> str:
    """bfloat16 on CUDA (float16 on GPUs older than Ampere), float32 on CPU, unless overridden
    (flag, then env, then config; an error names the one that asked)."""
    asked = Asked.first("dtype", override, DTYPE_ENV, configured)
    wanted = canonical_dtype(asked.value) if asked is not None else "auto"
    if asked is not None and wanted not in DTYPES:
        raise ModelError(f"{asked.says(quoted=True)} is not one of {', '.join(DTYPES)}")
    if wanted != "auto":
        return wanted
    if not device.startswith("cuda"):
        return "float32"
    return "bfloat16" if _bfloat16_in_hardware(device) else "float16"


def _bfloat16_in_hardware(device: str) -> bool:
    """Ampere (compute capability 8.0) and later compute in bfloat16; older GPUs (T4, V100: the
    free notebook GPUs) only emulate it, many times slower, so float16 is their half type (as
    vLLM chooses there). True where no GPU answers: the load then says what is wrong."""
    import torch

    if not torch.cuda.is_available():
        return True
    try:
        major, _minor = torch.cuda.get_device_capability(torch.device(device))
    except (RuntimeError, AssertionError, ValueError):
        return True
    return major >= 8


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
"""A checkpoint folder holds at least one: `save_pretrained` of the model alone writes none."""


def meta_default_device() -> str | None:
    """Why nothing can load or run now, when torch's default device is `meta` (the user's
    `torch.set_default_device('meta')`, to build a model's skeleton without memory): the load
    failed deep in torch and was blamed on a damaged model folder, a call after it showed a
    traceback from the tokenizer and turned the fast path off for the rest of the kernel."""
    torch = sys.modules.get("torch")
    try:
        device = torch.get_default_device() if torch is not None else None
    except Exception:  # a torch without it: it has no default device to set either
        return None
    if getattr(device, "type", "") != "meta":
        return None
    return (
        "torch's default device is meta (torch.set_default_device('meta')), where no model "
        "loads or runs: torch.set_default_device(None) puts it back, then ask again"
    )


def _built(name: str, progress: Progress | None) -> Path:
    """`embedded.ensure_built`, its failures (a read-only or full cache folder) in one line."""
    try:
        return embedded.ensure_built(name, progress=progress)
    except Exception as exc:  # PermissionError, SafetensorError "No space left on device"…
        folder = embedded.checkpoint_dir(name).parent
        raise ModelError(
            f"could not build {name} in {folder}: {type(exc).__name__}: {_first_line(exc)}; set "
            f"QWEN3_JUPYTER_CACHE to a writable folder with {embedded.build_size(name)} free"
        ) from None


def resolve_path(
    name: str, progress: Progress | None = None, asked: Asked | None = None
) -> tuple[str, bool]:
    """A local directory holding the checkpoint for `name`, and whether it is embedded.

    Order: an embedded model name; an existing local directory; the Hugging Face cache
    (offline). Raises ModelError with one line saying where it looked and what to do, naming
    where `name` was asked (`asked`; None: the `--model` flag).
    """
    says = asked.says() if asked is not None else f"--model {name}"
    place = asked.place if asked is not None else "--model"
    embedded_name = embedded.canonical_name(name)
    if embedded_name is not None:
        return str(_built(embedded_name, progress)), True
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelError(f"{local} is a folder but holds no config.json: point at a checkpoint")
        if not any((local / file).exists() for file in TOKENIZER_FILES):
            # transformers then makes an empty tokenizer, and the first call failed deep inside
            raise ModelError(
                f"{local} holds no tokenizer ({', '.join(TOKENIZER_FILES[:2])}): save it there "
                "too (tokenizer.save_pretrained), or copy its files from the original checkpoint"
            )
        return str(local), False
    if local.is_file():
        raise ModelError(f"{says}: a file; point at the folder that holds it")
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        nearest = next((p for p in local.absolute().parents if p.is_dir()), None)
        raise ModelError(
            f"model path {name!r} does not exist ({nearest} is the nearest folder that does): "
            f"point {place} at the folder holding config.json, or use a Hub id such as "
            f"{DEFAULT_MODEL}"
        )
    return _from_hf_cache(name, "" if asked is None or asked.where == CALL else asked.place), False


def _built_here(name: str) -> bool:
    """Whether this process built embedded model `name` (not another kernel it waited for)."""
    embedded_name = embedded.canonical_name(name)
    return embedded_name is not None and embedded.built_here(embedded_name)


def _builds_on_resolve(name: str) -> bool:
    """Whether resolving `name` builds an embedded model (not in the cache yet)."""
    embedded_name = embedded.canonical_name(name)
    return embedded_name is not None and not embedded.is_built(embedded_name)


def _from_hf_cache(repo_id: str, set_by: str = "") -> str:
    """The cached snapshot of `repo_id`, downloading it only where allowed and only when it is
    not in the cache (a cached model needs no network: with downloads allowed, a Hub that never
    answered held back a model already on disk); `set_by`: the setting that named it, when the
    user did not type it in this call."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    named = f"model {repo_id!r}{f' ({set_by})' if set_by else ''}"
    allow_download = switch(DOWNLOAD_ENV, default=False)
    try:
        cached = str(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:
        missed: Exception = exc
    else:  # a download stopped midway left a snapshot without its weights: allowed, finish it
        if not (allow_download and _weights_missing(Path(cached))):
            return cached
        missed = FileNotFoundError(f"{cached} has no weights")
    if allow_download:
        silent = _hub_silent()
        if silent is not None:
            raise ModelError(
                f"{named} is not in the Hugging Face cache, and {silent}: check the network or "
                "proxy (HF_ENDPOINT), or download it where the network works and use --model "
                "/path/to/it"
            )
        try:
            return str(snapshot_download(repo_id))
        except Exception as exc:
            missed = exc
    hint = (
        f"{named} not found: looked for a local folder and in the Hugging Face cache "
        f"({HF_HUB_CACHE}). Use --model /path/to/weights, set {MODEL_ENV}, or try the embedded "
        "model with --model tiny (or random:Qwen3-1.7B)"
    )
    if allow_download:  # the download's own error (network, access, a typo) is the reason
        raise ModelError(
            f"{hint}; downloading it failed: {type(missed).__name__}: {_first_line(missed)}"
        ) from missed
    # offline, the hub's lookup failing is all there is to say: its 60-line chain buried the
    # one line under it in an API call's traceback
    unread = unreadable(DOWNLOAD_ENV)
    told = f"${DOWNLOAD_ENV}={unread!r} is not a yes: " if unread else ""
    raise ModelError(f"{hint}; {told}set {DOWNLOAD_ENV}=1 to allow downloading") from None


HUB_ANSWER_S = 20.0
"""How long the Hub may take to answer before an allowed download is given up."""


def _hub_silent() -> str | None:
    """Why the Hub cannot be asked, when its endpoint took the connection and never answered
    (a firewall that drops packets, a stuck proxy); None otherwise, when the hub's own call
    says the rest. Why: its first request has no time limit, and `%qwen3 --model org/name`
    with downloads allowed showed "loading…" for as long as the kernel ran."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # the hub refuses at once, in its own words
        return None
    silent = f"{constants.ENDPOINT} did not answer within {HUB_ANSWER_S:.0f} s"
    try:
        asked = urllib.request.Request(f"{constants.ENDPOINT}/api/models", method="HEAD")
        urllib.request.urlopen(asked, timeout=HUB_ANSWER_S).close()
    except urllib.error.URLError as exc:  # (an HTTP error status too: it answered)
        return silent if isinstance(exc.reason, TimeoutError) else None
    except TimeoutError:
        return silent
    except (OSError, ValueError):
        return None
    return None


class ModelHolder:
    """The one model of this kernel: loaded on first use, reused by every call, freed on ask.
    One thread at a time uses it (`in_use`, see model_use)."""

    def __init__(self) -> None:
        self._loaded: LoadedModel | None = None
        self.loads = 0
        """How many loads succeeded: a caller tells from it whether its call loaded."""
        self.use = ModelUse()
        """Who uses the model now, and the stop asked of them (see model_use)."""
        self.before_release: list[Callable[[LoadedModel], None]] = []
        """Called with the model about to be released: what holds it beyond `LoadedModel`
        (the fast path's compiled steps close over the module) lets go first, or a switch
        kept the old weights alive while the new ones loaded."""

    @property
    def loaded(self) -> LoadedModel | None:
        return self._loaded

    def in_use(self, activity: str) -> AbstractContextManager[None]:
        """Hold the model for `activity`: the holding thread may nest, any other thread gets
        ModelBusy at once."""
        return self.use.hold(activity)

    def get(self, choice: ModelChoice, progress: Progress | None = None) -> LoadedModel:
        """The loaded model for `choice`, loading (and replacing another) only when needed."""
        refused = meta_default_device()
        if refused:
            raise ModelError(refused)
        current = self._loaded
        if current and is_loaded_as(current, choice):
            return current
        with self.in_use(f"loading {choice.name}"):
            current = self._loaded
            if current and is_loaded_as(current, choice):  # another thread just loaded it
                return current
            started = time.perf_counter()
            builds = _builds_on_resolve(choice.name)
            path, is_embedded = resolve_path(choice.name, progress, choice.asked)
            found = time.perf_counter()
            if current is not None:
                self._release()
            try:
                self._loaded = _load(choice, path, is_embedded, progress)
                self._loaded.load_seconds = time.perf_counter() - started
                self._loaded.build_seconds = found - started if builds else 0.0
                self._loaded.build_waited = builds and not _built_here(choice.name)
                self.loads += 1
            except ModelError as exc:
                if current is None:
                    raise
                raise ModelError(
                    f"{exc}; {current.name} was unloaded to make room for it "
                    f"(--model {current.name} loads it again)"
                ) from None
            return self._loaded

    def unload(self) -> bool:
        """Drop the model and tokenizer and return their memory; False if none was loaded."""
        with self.in_use("unloading the model"):
            if self._loaded is None:
                return False
            self._release()
            return True

    def _release(self) -> None:
        if self._loaded is not None:
            for hook in list(self.before_release):
                hook(self._loaded)
        loaded, self._loaded = self._loaded, None
        device = loaded.device if loaded is not None else None
        if loaded is not None:
            loaded.model = None
            loaded.tokenizer = None
        del loaded
        gc.collect()
        release_allocator_cache(device)
        if device is None or not device.startswith("cuda"):
            from .memory import trim_host_heap

            trim_host_heap()  # on CPU the weights and calls' buffers were on the C heap


def is_loaded_as(loaded: LoadedModel, choice: ModelChoice) -> bool:
    """Whether `loaded` is what `choice` asks for (the same model, device and dtype)."""
    return (
        same_model(loaded.name, choice.name)
        and loaded.dtype == choice.dtype
        and same_device(loaded.device, choice.device)
    )


def same_model(first: str, second: str) -> bool:
    """Whether two names name one model: `tiny` and `random:tiny`, a folder and the same
    folder with a trailing slash or through `~` (each was reloaded, its fast path rebuilt)."""
    return first == second or _model_key(first) == _model_key(second)


def _model_key(name: str) -> str:
    embedded_name = embedded.canonical_name(name)
    if embedded_name is not None:
        return f"embedded:{embedded_name}"
    local = Path(name).expanduser()
    return f"folder:{local.resolve()}" if local.is_dir() else name


def release_allocator_cache(device: str | None = None) -> None:
    """Return torch's cached CUDA blocks to the driver (nothing to do on CPU).

    `device` is the GPU whose queued work must end first: `synchronize()` alone waits for the
    current device, cuda:0 unless a cell set another, not the `cuda:1` a model may be on (and
    would touch a GPU the kernel does not use). None: the current device."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if device is None:
            torch.cuda.synchronize()
        elif device.startswith("cuda"):
            torch.cuda.synchronize(torch.device(device))
        torch.cuda.empty_cache()


def indexed_device(name: str) -> str:
    """`cuda` as the GPU it means now (`cuda:1` after `torch.cuda.set_device(1)`), any other
    name as it is. Why: kept as plain `cuda`, a loaded model's device followed the current GPU
    afterwards: a cell's `torch.cuda.set_device(1)` sent every later call's inputs, cache and
    memory figures to cuda:1, away from its weights on cuda:0."""
    import torch

    if name == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return name


def _how_to_mend(name: str, path: str, is_embedded: bool) -> str:
    """What ends a failed load's line when the folder is one a tool filled: our build (cut
    short, or a file changed since) or the Hugging Face cache (a download stopped midway, whose
    snapshot holds the config but not the weights); "" for the user's own folder."""
    if is_embedded:
        return (
            f"; the embedded model's files there are damaged: delete that folder (rm -r "
            f"'{path}') and run again to build it anew"
        )
    from huggingface_hub.constants import HF_HUB_CACHE

    in_hub_cache = Path(path).resolve().is_relative_to(Path(HF_HUB_CACHE).resolve())
    if in_hub_cache and _weights_missing(Path(path)):
        return (
            f"; its copy in the Hugging Face cache looks unfinished: `hf download {name}` "
            "completes it"
        )
    return ""


def _weights_missing(folder: Path) -> bool:
    """Whether `folder` lacks weight files it should have: none at all, or shards its index
    names (what a download stopped midway leaves; a whole snapshot of an architecture this
    transformers lacks is not mended by downloading it again)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return True
            return not all((folder / shard).is_file() for shard in shards)
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
    return not any(next(folder.glob(pattern), None) for pattern in patterns)


def _weights_of_another_model(model: Any, loading: dict[str, Any], path: str) -> str | None:
    """Why `model` must not be used when most of its weights were not in the checkpoint (GPT-2
    weights beside a Qwen3 config loaded as random noise, said only in transformers' 40-line
    report on stderr, then "loaded"); None when the checkpoint filled it."""
    missing = set(loading.get("missing_keys") or ())
    names = list(model.state_dict())
    if not names or len(missing) * 2 <= len(names):
        return None
    unexpected = sorted(loading.get("unexpected_keys") or ())
    holds = f" (it holds {unexpected[0]!r}, …)" if unexpected else ""
    return (
        f"{len(missing):,} of the {len(names):,} weights of {type(model).__name__} are not in "
        f"{path}{holds}: its weights are another model's, which would answer as random noise"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load(
    choice: ModelChoice, path: str, is_embedded: bool, progress: Progress | None = None
) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = None
    failure: str | None = None
    device = indexed_device(choice.device)
    try:
        what = f"loading {choice.name} on {device} ({choice.dtype})"
        with (
            hub_progress_bars_off(),
            loading_progress(progress, what),
            load_report_held() as report,
        ):
            tokenizer = AutoTokenizer.from_pretrained(path)
            model, loading = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=getattr(torch, choice.dtype),
                device_map=None,
                low_cpu_mem_usage=True,
                output_loading_info=True,
            )
        failure = _weights_of_another_model(model, loading, path)
        if failure is None:
            let_out(report)  # a few weights missing: transformers' own table names them
            model.to(torch.device(device))
    except (OSError, ValueError) as exc:
        failure = f"could not load {choice.name} from {path}: {_first_line(exc)}"
    except RuntimeError as exc:  # torch.OutOfMemoryError, or the CPU allocator's RuntimeError
        short_of = out_of_memory_reason(exc)
        elsewhere = "a smaller model" if choice.device == "cpu" else "--device cpu"
        failure = (
            f"could not load {choice.name} from {path}: {_first_line(exc)}"
            if short_of is None
            else f"out of memory loading {choice.name} on {choice.device} ({short_of}): free "
            f"memory with %qwen3_clean --verbose, or pick a smaller --dtype or {elsewhere}"
        )
    except Exception as exc:  # a truncated safetensors file (SafetensorError), a loader's bug
        why = f"{type(exc).__name__}: {_first_line(exc)}"
        failure = f"could not load {choice.name} from {path}: {why}"
    if failure is not None and not failure.startswith("out of memory"):
        failure += _how_to_mend(choice.name, path, is_embedded)
    if failure is not None:
        # Out of the except block, the failed load's frames are gone (chained to the error,
        # they kept it): drop the weights that reached the device, so the failure holds nothing.
        model = None
        gc.collect()
        release_allocator_cache(choice.device)
        raise ModelError(failure)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    _positions_checked_here(tokenizer)
    return LoadedModel(
        name=choice.name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=choice.dtype,
        embedded=is_embedded,
    )


def _positions_checked_here(tokenizer: Any) -> None:
    """Silence transformers' "Token indices sequence length is longer than the specified
    maximum" warning: every call checks the prompt against the model's own positions and
    refuses it in one line, and the warning came above that line naming the tokenizer's
    `model_max_length` (40,960 for `tiny`, whose limit is 4,096). It is said once per
    tokenizer, which this marks as said."""
    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True


HOLDER = ModelHolder()
