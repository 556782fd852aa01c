"""Model resolution: precedence, defaults, and one-line errors for missing models."""

from __future__ import annotations

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
    for part in (
        "Hugging Face cache",
        "--model /path/to/weights",
        "--model tiny",
        models.DOWNLOAD_ENV,
    ):
        assert part in message


def test_local_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(models.ModelError, match=r"holds no config\.json"):
        models.resolve_path(str(tmp_path))


def test_local_checkpoint_folder_is_used_as_is(model_cache: Path) -> None:
    from qwen3_jupyter import embedded

    path = embedded.ensure_built("tiny")
    assert models.resolve_path(str(path)) == (str(path), False)


def test_failed_switch_keeps_the_loaded_model(model_cache: Path) -> None:
    holder = models.ModelHolder()
    loaded = holder.get(models.ModelChoice("tiny", "cpu", "float32"))
    with pytest.raises(models.ModelError):
        holder.get(models.ModelChoice("/no/such/model", "cpu", "float32"))
    assert holder.loaded is loaded
    holder.unload()
