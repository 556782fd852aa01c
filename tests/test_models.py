"""Model resolution: precedence, defaults, and one-line errors for missing models."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import pytest

from qwen3_jupyter import models


def test_choice_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(models.MODEL_ENV, raising=False)
    assert models.choose_model() == "Qwen/Qwen3-1.7B"
    assert models.choose_model(configured="cfg") == "cfg"
    monkeypatch.setenv(models.MODEL_ENV, "env")
    assert models.choose_model(configured="cfg") == "env"
    assert models.choose_model("flag", "cfg") == "flag"


def test_device_and_dtype_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv(models.DEVICE_ENV, raising=False)
    monkeypatch.delenv(models.DTYPE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.pick_device() == expected
    assert models.pick_dtype("cpu") == "float32"
    assert models.pick_dtype("cuda") == "bfloat16"
    assert models.pick_dtype("cpu", "bfloat16") == "bfloat16"
    for typed, meant in (
        ("bf16", "bfloat16"),
        ("FP16", "float16"),
        ("half", "float16"),
        ("torch.float32", "float32"),
        (" fp32 ", "float32"),
    ):
        assert models.pick_dtype("cpu", typed) == meant, typed
    monkeypatch.setenv(models.DTYPE_ENV, "bf16")
    assert models.pick_dtype("cpu") == "bfloat16"
    with pytest.raises(models.ModelError, match="not one of"):
        models.pick_dtype("cpu", "int3")


def test_missing_hub_model_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv(models.DOWNLOAD_ENV, raising=False)
    with pytest.raises(models.ModelError) as info:
        models.resolve_path("Qwen/Qwen3-1.7B")
    message = str(info.value)
    assert "\n" not in message
    assert info.value.__suppress_context__, "no chain of the hub's lookup under the one line"
    for part in (
        "Hugging Face cache",
        "--model /path/to/weights",
        "--model tiny",
        models.DOWNLOAD_ENV,
    ):
        assert part in message


def test_a_failed_download_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With downloading allowed, a failed download read "not found" and its reason (offline,
    no access, a typo) went only into the exception's chain, which a cell does not show."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv(models.DOWNLOAD_ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub refuses at once, as with no network
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(models.ModelError) as info:
        models.resolve_path("Qwen/Qwen3-1.7B")
    message = str(info.value)
    assert "\n" not in message and "; downloading it failed: " in message, message
    assert message.split("; downloading it failed: ")[1].strip(), message


def test_an_allowed_download_from_a_hub_that_never_answers_ends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A Hub endpoint that takes the connection and never answers (a firewall dropping
    packets, a stuck proxy): the hub's first request has no time limit, and the cell showed
    "loading…" for as long as the kernel ran (900 s, then interrupted)."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # connections are taken (the backlog) and nothing is ever sent back
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv(models.DOWNLOAD_ENV, "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", endpoint)
    monkeypatch.setattr(models, "HUB_ANSWER_S", 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(models.ModelError) as info:
            models.resolve_path("Qwen/Qwen3-1.7B")
    finally:
        silent.close()
    assert time.monotonic() - started < 30
    # A model already in the cache needs no network: it is used at once, the Hub not asked.
    import shutil

    from qwen3_jupyter import embedded

    snapshot = tmp_path / "models--someorg--cached" / "snapshots" / "abc123"
    shutil.copytree(embedded.ensure_built("tiny"), snapshot)
    (tmp_path / "models--someorg--cached" / "refs").mkdir()
    (tmp_path / "models--someorg--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "HUB_ANSWER_S", 60.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setattr(
        "huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}"
    )
    started = time.monotonic()
    try:
        assert models.resolve_path("someorg/cached")[0] == str(snapshot)
    finally:
        silent.close()
    assert time.monotonic() - started < 30
    assert str(info.value) == (
        "model 'Qwen/Qwen3-1.7B' is not in the Hugging Face cache, and "
        f"{endpoint} did not answer within 1 s: check the network or proxy (HF_ENDPOINT), or "
        "download it where the network works and use --model /path/to/it"
    )


def test_local_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(models.ModelError, match=r"holds no config\.json"):
        models.resolve_path(str(tmp_path))


def test_local_checkpoint_folder_is_used_as_is(model_cache: Path) -> None:
    from qwen3_jupyter import embedded

    path = embedded.ensure_built("tiny")
    assert models.resolve_path(str(path)) == (str(path), False)


def test_the_load_that_builds_an_embedded_model_says_how_long_the_build_took(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call on a fresh cache is the slow one; its load line says why, and later
    loads (the build cached) do not repeat it."""
    import shutil

    from qwen3_jupyter import embedded
    from qwen3_jupyter.session import loaded_notice

    embedded.ensure_built("tiny")  # the shared cache's tokenizer, converted once per run
    shutil.copytree(model_cache / "tokenizer", tmp_path / "tokenizer")  # (its ~4 s: not ours)
    monkeypatch.setenv("QWEN3_JUPYTER_CACHE", str(tmp_path))
    choice = models.ModelChoice("tiny", "cpu", "float32")
    first = models.ModelHolder()
    built = first.get(choice)
    assert 0 < built.build_seconds < built.load_seconds
    took = f"in {built.load_seconds:.1f} s ({built.build_seconds:.1f} s of it the first build, "
    assert took in loaded_notice(built)
    first.unload()
    again = models.ModelHolder()
    cached = again.get(choice)
    assert cached.build_seconds == 0 and cached.load_seconds > 0
    assert "first build" not in loaded_notice(cached)
    again.unload()


def test_a_folder_that_is_not_a_whole_checkpoint_is_one_line(
    model_cache: Path, tmp_path: Path
) -> None:
    """A folder of `model.save_pretrained` alone (no tokenizer) loaded, and the first call
    failed in the chat template with ~40 frames; a truncated weights file (a copy cut short)
    was a SafetensorError traceback; a file named instead of its folder "did not exist"."""
    import shutil

    from qwen3_jupyter import embedded

    built = embedded.ensure_built("tiny")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(built / name, bare / name)
    with pytest.raises(models.ModelError, match=r"bare holds no tokenizer \(tokenizer\.json"):
        models.resolve_path(str(bare))
    with pytest.raises(models.ModelError, match=r"config\.json: a file; point at the folder"):
        models.resolve_path(str(bare / "config.json"))
    cut = tmp_path / "cut"
    shutil.copytree(built, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    holder = models.ModelHolder()
    with pytest.raises(models.ModelError) as raised:
        holder.get(models.ModelChoice(str(cut), "cpu", "float32"))
    message = str(raised.value)
    assert message.startswith(f"could not load {cut} from {cut}: ") and "\n" not in message
    assert holder.loaded is None


def test_a_damaged_embedded_build_says_to_delete_it(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build of ours cut short later (a disk that filled, a copy) failed every load with the
    loader's own words ("incomplete metadata"), and nothing said that deleting it rebuilds it."""
    import shutil

    from qwen3_jupyter import embedded

    built = embedded.ensure_built("tiny")
    shutil.copytree(model_cache / "tokenizer", tmp_path / "tokenizer")
    shutil.copytree(built, tmp_path / "embedded" / built.name)
    weights = tmp_path / "embedded" / built.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1 << 20])
    monkeypatch.setenv("QWEN3_JUPYTER_CACHE", str(tmp_path))
    with pytest.raises(models.ModelError) as raised:
        models.ModelHolder().get(models.ModelChoice("tiny", "cpu", "float32"))
    assert str(raised.value).endswith(
        f"the embedded model's files there are damaged: delete that folder (rm -r "
        f"'{weights.parent}') and run again to build it anew"
    ), raised.value


def test_a_download_stopped_midway_says_how_to_finish_it(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hugging Face cache whose snapshot has the config but not the weights (a download
    stopped midway) said only "no file named model.safetensors"."""
    import shutil

    from qwen3_jupyter import embedded

    snapshot = tmp_path / "models--someorg--small" / "snapshots" / "abc123"
    shutil.copytree(embedded.ensure_built("tiny"), snapshot)
    (snapshot / "model.safetensors").unlink()
    (tmp_path / "models--someorg--small" / "refs").mkdir()
    (tmp_path / "models--someorg--small" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv(models.DOWNLOAD_ENV, raising=False)
    with pytest.raises(models.ModelError) as raised:
        models.ModelHolder().get(models.ModelChoice("someorg/small", "cpu", "float32"))
    assert str(raised.value).endswith(
        "; its copy in the Hugging Face cache looks unfinished: `hf download someorg/small` "
        "completes it"
    ), raised.value
    # Downloads allowed, the Hub is asked to finish it (here one that never answers): the
    # snapshot's folder alone was taken as the model, and the download never resumed.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setenv(models.DOWNLOAD_ENV, "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        "huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}"
    )
    monkeypatch.setattr(models, "HUB_ANSWER_S", 1.0)
    try:
        with pytest.raises(models.ModelError, match="did not answer within 1 s"):
            models.resolve_path("someorg/small")
    finally:
        silent.close()
    monkeypatch.delenv(models.DOWNLOAD_ENV)
    # A whole snapshot that fails otherwise (an architecture this transformers lacks) is not
    # sent to download it again, which would change nothing.
    shutil.copy(embedded.ensure_built("tiny") / "model.safetensors", snapshot)
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "model_type": "newarch9000"}))
    with pytest.raises(models.ModelError) as raised:
        models.ModelHolder().get(models.ModelChoice("someorg/small", "cpu", "float32"))
    assert "could not load someorg/small" in str(raised.value), raised.value
    assert "unfinished" not in str(raised.value), raised.value


def test_weights_of_another_model_are_refused_not_loaded_as_noise(
    model_cache: Path, tmp_path: Path
) -> None:
    """A Qwen3 config beside another model's weights loaded with every weight random, said
    only in transformers' report on stderr; the call then said "loaded" and answered noise.
    Refused, its one line is all: the report's 40-line table of weights is not written."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from qwen3_jupyter import embedded

    reports: list[str] = []  # what transformers' load report logger writes (its own handler
    # holds the stream of whichever test first logged, so capfd cannot see it)
    sink = logging.Handler()
    sink.emit = lambda record: reports.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("transformers.modeling_utils").addHandler(sink)
    other = tmp_path / "other"
    shutil.copytree(embedded.ensure_built("tiny"), other)
    save_file(
        {"transformer.h.0.attn.c_attn.weight": torch.zeros(4, 4)}, other / "model.safetensors"
    )
    holder = models.ModelHolder()
    with pytest.raises(models.ModelError) as raised:
        holder.get(models.ModelChoice(str(other), "cpu", "float32"))
    assert str(raised.value).startswith(
        f"25 of the 25 weights of Qwen3ForCausalLM are not in {other} (it holds "
        "'transformer.h.0.attn.c_attn.weight', …): its weights are another model's"
    ), raised.value
    assert holder.loaded is None
    try:
        assert not [r for r in reports if "LOAD REPORT" in r], reports
        # A checkpoint short of a few weights still loads, and transformers' report names them.
        kept = tmp_path / "kept"
        shutil.copytree(embedded.ensure_built("tiny"), kept)
        weights = load_file(kept / "model.safetensors")
        del weights["model.norm.weight"]
        save_file(weights, kept / "model.safetensors")
        holder.get(models.ModelChoice(str(kept), "cpu", "float32"))
        holder.unload()
    finally:
        logging.getLogger("transformers.modeling_utils").removeHandler(sink)
    assert [r for r in reports if "LOAD REPORT" in r and "model.norm.weight" in r], reports


def test_one_model_named_two_ways_is_not_loaded_again(model_cache: Path, tmp_path: Path) -> None:
    """`tiny` and `random:tiny`, a folder with and without its trailing slash: each reload
    threw away the fast path's cache and compiled steps."""
    from qwen3_jupyter import embedded

    folder = embedded.ensure_built("tiny")
    assert models.same_model("tiny", "random:tiny")
    assert models.same_model(str(folder), f"{folder}/")
    assert not models.same_model("tiny", str(folder)), "the embedded name is its own model"
    holder = models.ModelHolder()
    loaded = holder.get(models.ModelChoice(str(folder), "cpu", "float32"))
    assert holder.get(models.ModelChoice(f"{folder}/", "cpu", "float32")) is loaded
    assert holder.loads == 1
    holder.unload()


def test_a_device_this_machine_lacks_is_one_line() -> None:
    """`--device mps` here loaded, then failed in torch with a traceback (after the previous
    model was already released)."""
    with pytest.raises(models.ModelError, match=r"^--device mps: no mps device here; use --"):
        models.pick_device("mps")


def test_failed_switch_keeps_the_loaded_model(model_cache: Path) -> None:
    holder = models.ModelHolder()
    loaded = holder.get(models.ModelChoice("tiny", "cpu", "float32"))
    with pytest.raises(models.ModelError):
        holder.get(models.ModelChoice("/no/such/model", "cpu", "float32"))
    assert holder.loaded is loaded
    holder.unload()


def test_a_checkpoint_too_large_for_the_host_is_one_line_and_holds_nothing(
    model_cache: Path, tmp_path: Path
) -> None:
    """torch's CPU allocator fails with a RuntimeError, not torch.OutOfMemoryError: loading
    still ends in the one-line out-of-memory message, and nothing of the failed load lives on."""
    import gc

    from qwen3_jupyter import embedded
    from tests.oversized import checkpoint_too_large_for_any_host

    def models_alive() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if type(o).__name__ == "Qwen3ForCausalLM"}

    huge = checkpoint_too_large_for_any_host(embedded.ensure_built("tiny"), tmp_path / "huge")
    alive_before = models_alive()
    holder = models.ModelHolder()
    holder.get(models.ModelChoice("tiny", "cpu", "float32"))
    with pytest.raises(models.ModelError) as info:
        holder.get(models.ModelChoice(str(huge), "cpu", "float32"))
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert (
        f"out of memory loading {huge} on cpu (host memory: could not allocate 262144.0 TiB "
        "more): free memory with %qwen3_clean --verbose, or pick a smaller --dtype or a smaller "
        "model; tiny was unloaded to make room for it (--model tiny loads it again)"
    ) == message
    assert holder.loaded is None
    # Measured while the error is still held: neither tiny nor the half-built model is alive.
    assert models_alive() <= alive_before


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_a_model_loaded_on_plain_cuda_stays_on_that_gpu(model_cache: Path) -> None:
    """Kept as `cuda`, the model's device followed `torch.cuda.set_device` afterwards, so a
    cell choosing another GPU sent the calls' inputs away from the weights."""
    import torch

    loaded = models.ModelHolder().get(models.ModelChoice("tiny", "cuda", "float32"))
    current = torch.cuda.current_device()
    assert loaded.device == f"cuda:{current}"
    assert next(loaded.model.parameters()).device == torch.device(loaded.device)
    assert models.same_device(loaded.device, "cuda"), "`--device cuda` asks for it again"
    assert models.indexed_device("cpu") == "cpu" and models.indexed_device("cuda:0") == "cuda:0"


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_a_switch_back_to_the_same_shape_is_not_the_old_model_still_held(
    model_cache: Path,
) -> None:
    """CUDA's allocator hands the blocks of the weights just released to the next model of
    their size: matched by address alone, the new weights were said to be the old model
    "still in memory" (`weights_held` now holds weak references to the old storages)."""
    from qwen3_jupyter.session import SESSION

    try:
        for dtype in ("float32", "bfloat16", "float32", "bfloat16"):
            SESSION.load(SESSION.choice("tiny", "cuda", dtype))
            said = " ".join(SESSION.take_notices())
            assert "still in memory" not in said, said
    finally:
        SESSION.unload()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_gpu_a_model_larger_than_the_free_memory_gives_back_what_fit(model_cache: Path) -> None:
    """The weights are moved to the GPU after loading on the host: running out part-way must
    end in the one-line message with every byte that did reach the GPU given back (allocated
    bytes measured before and after), not in a traceback that keeps them."""
    import torch

    from qwen3_jupyter import embedded

    embedded.ensure_built("random:Qwen3-1.7B")  # 3.4 GB in bf16; 1 GiB of the GPU is left free
    # An earlier test's unreachable cycles (a failed test's frames, say) must go first: the load
    # collects, and what it frees of theirs would look like the load giving back more than it took
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    blocker = torch.empty(free - 2**30, dtype=torch.uint8, device="cuda")
    allocated = torch.cuda.memory_allocated()
    try:
        with pytest.raises(models.ModelError) as info:
            models.ModelHolder().get(models.ModelChoice("random:Qwen3-1.7B", "cuda", "bfloat16"))
        message = str(info.value)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(
            "out of memory loading random:Qwen3-1.7B on cuda (CUDA out of memory."
        ), message
        assert message.endswith("or pick a smaller --dtype or --device cpu"), message
        assert torch.cuda.memory_allocated() == allocated, "weights that reached the GPU are held"
    finally:
        del blocker
        torch.cuda.empty_cache()
