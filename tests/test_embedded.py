"""The embedded models: Qwen3's shapes, real vocabulary and special ids, template, determinism."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen3_jupyter import embedded


def test_tiny_builds_quickly_and_is_cached(model_cache: Path) -> None:
    import time

    path = embedded.ensure_built("tiny")
    started = time.perf_counter()
    again = embedded.ensure_built("tiny")
    assert again == path
    assert time.perf_counter() - started < 0.1
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen3"
    assert config["num_hidden_layers"] == 2


def test_full_size_shape_matches_qwen3_1_7b() -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    spec = embedded.EMBEDDED["random:Qwen3-1.7B"]
    config = Qwen3Config(**spec.config)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    assert (config.num_hidden_layers, config.hidden_size) == (28, 2048)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (16, 8, 128)
    assert config.vocab_size == 151936 and config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert 1.70e9 < params < 1.73e9


def test_tokenizer_has_qwen_vocabulary_and_special_ids(model_cache: Path) -> None:
    tokenizer = embedded.build_tokenizer()
    assert len(tokenizer) == 151669
    ids = tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    )
    assert ids == [151643, 151644, 151645, 151667, 151668]
    text = "Hello, 世界! def f(x): return x**2"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    # Qwen's BPE: "Hello" is a single token.
    assert len(tokenizer("Hello")["input_ids"]) == 1


def test_a_killed_conversions_temporary_file_is_removed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel killed while converting the tokenizer left its 11 MB `.tmp<pid>` file in the
    cache for good; a conversion under way in another kernel (a recent file) is left alone."""
    monkeypatch.setenv("QWEN3_JUPYTER_CACHE", str(tmp_path))
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    stem = f"qwen3-v{embedded.BUILD_FORMAT}"
    killed, running = folder / f"{stem}.tmp4242", folder / f"{stem}.tmp4343"
    for leftover in (killed, running):
        leftover.write_bytes(b"{")
    two_hours_ago = time.time() - 7200
    os.utime(killed, (two_hours_ago, two_hours_ago))
    assert len(embedded.build_tokenizer()) == 151669
    assert sorted(p.name for p in folder.iterdir()) == [f"{stem}.json", running.name]


def test_the_checkpoint_records_its_added_tokens_as_qwen3s_own_do(model_cache: Path) -> None:
    """Without `added_tokens_decoder` in tokenizer_config.json transformers parses the whole
    tokenizer.json once more in Python (1.6 s per load instead of 0.9 s); with it the loaded
    tokenizer is the same. A checkpoint built before gets them on its next use."""
    from transformers import AutoTokenizer

    path = embedded.ensure_built("tiny")
    recorded = json.loads((path / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert recorded["151668"] == {
        "content": "</think>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": False,
    }
    assert len(recorded) == 151669 - 151643
    loaded, built = AutoTokenizer.from_pretrained(path), embedded.build_tokenizer()
    text = "<|im_start|>user\nhi 世界<|im_end|>\n<think>\nx</think>\n\nok<|endoftext|>"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert (loaded.eos_token, loaded.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert loaded.added_tokens_decoder == built.added_tokens_decoder

    config = path / "tokenizer_config.json"
    older = json.loads(config.read_text())
    del older["added_tokens_decoder"]
    config.write_text(json.dumps(older))
    assert embedded.ensure_built("tiny") == path
    assert json.loads(config.read_text())["added_tokens_decoder"] == recorded


def test_chat_template_honours_enable_thinking(model_cache: Path) -> None:
    tokenizer = embedded.build_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
        {"role": "user", "content": "Again"},
    ]
    on = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    off = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert on.startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    assert "hmm" not in on, "earlier thinking must be dropped from the history, as Qwen3 does"
    assert "<|im_start|>assistant\nHello!<|im_end|>\n" in on
    assert on.endswith("<|im_start|>assistant\n")
    assert off == on + "<think>\n\n</think>\n\n"


def test_same_seed_same_weights_other_seed_other_weights(model_cache: Path) -> None:
    from safetensors.torch import load_file

    first = load_file(str(embedded.ensure_built("tiny", seed=3) / "model.safetensors"))
    other = load_file(str(embedded.ensure_built("tiny", seed=4) / "model.safetensors"))
    (embedded.checkpoint_dir("tiny", 3) / "qwen3_jupyter_build.json").unlink()
    rebuilt = load_file(str(embedded.ensure_built("tiny", seed=3) / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert (first[name] == rebuilt[name]).all()
    assert not (first[name] == other[name]).all()
    assert (first["model.norm.weight"] == 1).all()


def test_progress_is_reported_while_building(
    model_cache: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Our own progress, and not transformers' "Writing model shards" bar as well (in a kernel
    that bar was 11 ipywidgets models left alive by the first call); the user's own setting for
    transformers' bars is kept."""
    from transformers.utils import logging as hf_logging

    seen: list[tuple[str, int, int]] = []
    (embedded.checkpoint_dir("tiny", 7) / "qwen3_jupyter_build.json").unlink(missing_ok=True)
    assert hf_logging.is_progress_bar_enabled()
    embedded.ensure_built("tiny", seed=7, progress=lambda *a: seen.append(a))
    assert seen and seen[-1][1] == seen[-1][2]
    assert all(b <= c for _, b, c in seen)
    assert "Writing model shards" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("name", ["tiny", "random:tiny", "random:Qwen3-1.7B", "random:qwen3-1.7b"])
def test_names(name: str) -> None:
    assert embedded.canonical_name(name) in embedded.EMBEDDED


@pytest.mark.skipif(sys.platform == "win32", reason="builds take turns through fcntl")
def test_a_build_another_process_finished_meanwhile_is_not_redone(model_cache: Path) -> None:
    """Two kernels on a fresh cache each built the model, and the last to finish deleted the
    folder the first was loading from ("Unable to load vocabulary"). A build now waits for
    the one under way and uses its result."""
    import fcntl

    target = embedded.checkpoint_dir("tiny", 11)
    shutil.rmtree(target, ignore_errors=True)
    finished_elsewhere = embedded.ensure_built("tiny", seed=12)
    with open(target.with_name(f"{target.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a build under way in another process
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from qwen3_jupyter import embedded as e\nprint(e.ensure_built('tiny', seed=11))",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)
        assert child.poll() is None, "it did not wait for the build under way"
        assert not list(target.parent.glob(f"{target.name}.tmp*")), "it built meanwhile"
        shutil.copytree(finished_elsewhere, target)  # that build's result
        marker = (target / "qwen3_jupyter_build.json").stat().st_ino
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 0 and out.strip() == str(target)
    assert (target / "qwen3_jupyter_build.json").stat().st_ino == marker, "built over it"


@pytest.mark.skipif(sys.platform == "win32", reason="builds take turns through fcntl")
def test_a_dead_builds_leftovers_are_removed_by_the_next_build(model_cache: Path) -> None:
    """A kernel killed mid-build (the OOM killer, a restart's SIGKILL) left its temporary
    folder, up to 3.3 GB for random:Qwen3-1.7B, and no later build or load removed it."""
    target = embedded.checkpoint_dir("tiny", 14)
    shutil.rmtree(target, ignore_errors=True)
    dead = target.with_name(f"{target.name}.tmp99999-deadbeef")
    dead.mkdir(parents=True, exist_ok=True)
    (dead / "model.safetensors").write_bytes(b"\0" * 4096)  # cut short by the kill
    other = target.with_name("tiny-seed15-v1.tmp99999-0badf00d")  # another model's: kept
    other.mkdir(exist_ok=True)
    try:
        assert embedded.ensure_built("tiny", seed=14) == target
        assert not dead.exists(), "the dead build's folder is still there"
        assert other.exists(), "a build of another model is not this one's to remove"
    finally:
        shutil.rmtree(other, ignore_errors=True)


@pytest.mark.skipif(sys.platform == "win32", reason="builds take turns through fcntl")
def test_a_load_that_waited_for_another_kernels_build_says_so(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that waited for another kernel's build said "N s of it the first build", and
    its status line said only "loading…" while it waited (25 s for random:Qwen3-1.7B), then
    "…: 0%" throughout the wait."""
    import fcntl
    import threading

    from qwen3_jupyter.hub_progress import progress_text
    from qwen3_jupyter.models import ModelChoice, ModelHolder
    from qwen3_jupyter.session import loaded_notice

    built = embedded.ensure_built("tiny")  # in the tests' cache
    monkeypatch.setenv("QWEN3_JUPYTER_CACHE", str(tmp_path))
    target = embedded.checkpoint_dir("tiny")
    target.parent.mkdir(parents=True)
    seen: list[str] = []
    holder, loaded = ModelHolder(), []
    with open(target.with_name(f"{target.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another kernel's build under way
        waiter = threading.Thread(
            target=lambda: loaded.append(
                holder.get(
                    ModelChoice("tiny", "cpu", "float32"),
                    progress=lambda *step: seen.append(progress_text(*step)),
                )
            )
        )
        waiter.start()
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["waiting for another process's build of tiny…"], seen  # not ": 0%"
        shutil.copytree(built, target)  # that build's result
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(120)
    try:
        notice = loaded_notice(loaded[0])
        assert "waiting for another kernel's build of it" in notice, notice
        assert "the first build" not in notice, notice
    finally:
        holder.unload()


def test_a_built_checkpoint_is_readable_by_other_users(model_cache: Path) -> None:
    """`save_pretrained` left the weights owner-only (0600): a cache one user built (a shared
    $QWEN3_JUPYTER_CACHE) failed for the others with "No such file or directory"."""
    (embedded.checkpoint_dir("tiny", 13) / "qwen3_jupyter_build.json").unlink(missing_ok=True)
    umask = os.umask(0o022)
    try:
        path = embedded.ensure_built("tiny", seed=13)
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [path, *path.iterdir()]}
    assert modes["model.safetensors"] == 0o644, modes
    assert all(mode & 0o044 == 0o044 for mode in modes.values()), modes


def test_a_cache_that_cannot_be_written_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only or full cache folder gave a ~95-line traceback (PermissionError, or
    safetensors' "No space left on device") through %qwen3 and the API alike."""
    from qwen3_jupyter.models import ModelError, resolve_path

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("QWEN3_JUPYTER_CACHE", str(blocker / "cache"))
    with pytest.raises(ModelError) as failed:
        resolve_path("tiny")
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"could not build tiny in {blocker / 'cache' / 'embedded'}: ")
    assert message.endswith(
        f"set QWEN3_JUPYTER_CACHE to a writable folder with {embedded.build_size('tiny')} free"
    )


def test_the_room_a_build_asks_for_is_what_it_writes(model_cache: Path) -> None:
    """The full-cache error asked for the weights alone (~37 MiB for tiny): a user who freed
    that much ran out again, as the tokenizer (twice, on a first build) doubles it."""
    path = embedded.ensure_built("tiny", seed=13)
    written = sum(f.stat().st_size for f in path.iterdir())
    asked = float(embedded.build_size("tiny").strip("~ MiB")) * 2**20
    assert written <= asked < written * 1.2, (written, asked)
