"""Configuration from files and the environment: a bad value is one line, never a lost extension."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen3_jupyter.bench._kernel import Kernel
from qwen3_jupyter.env_switches import switch
from qwen3_jupyter.models import ModelError, _from_hf_cache

from .kernel import ok

KERNEL_CONFIG = """
from traitlets.config.loader import DeferredConfigString
c.InteractiveShellApp.extensions = ["qwen3_jupyter"]
c.InteractiveShellApp.exec_lines = ["%qwen3_gauge"]
c.Qwen3Magics.stream_interval = DeferredConfigString("0.5s")  # as `--Qwen3Magics.…=0.5s`
c.Qwen3Magics.modle = "tiny"
c.Qwen3Magics.decode = DeferredConfigString("'eager'")  # as `--Qwen3Magics.decode='eager'` gives it
c.Qwen3Magics.dtype = "float32"
"""
MAGICS = "get_ipython().magics_manager.registry['Qwen3Magics']"


def test_a_bad_config_file_value_is_said_and_the_extension_still_loads(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    """A value traitlets refused (`stream_interval = '0.5s'`) made the extension fail to load
    at kernel start: the notebook saw only "Line magic function `%qwen3` not found", the reason
    in the server's terminal. A gauge in exec_lines showed in no cell, yet its thread polled."""
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(KERNEL_CONFIG)
    kernel = Kernel({**kernel_env, "IPYTHONDIR": str(tmp_path / "ipython")})
    refusals = {
        "stream_interval": "[qwen3] c.Qwen3Magics.stream_interval = '0.5s' is refused (expected "
        "a float, not the str '0.5s'): using 0.1; fix it where it is set (a config file, the "
        "kernel's command line), or %config Qwen3Magics.stream_interval = …",
        "modle": "[qwen3] c.Qwen3Magics.modle is not an option (did you mean model?): ignored",
    }
    try:
        first = ok(kernel, "%qwen3 --no-think --max-new-tokens 2 hi")
        said = [line for line in first.stdout.splitlines() if "c.Qwen3Magics" in line]
        assert said == list(refusals.values()), first.stdout
        assert kernel.value("_qwen3.completion_tokens") == 2
        assert kernel.value(f"({MAGICS}.decode, {MAGICS}.dtype)") == ("eager", "float32")
        assert "c.Qwen3Magics" not in ok(kernel, "%qwen3 --no-think --max-new-tokens 2 hi").stdout
        threads = "[t.name for t in __import__('threading').enumerate()]"
        assert "qwen3-jupyter-monitor" not in kernel.value(threads)

        # Loaded again from a cell, that cell says them at once, and no later call again.
        reloaded = ok(kernel, "%reload_ext qwen3_jupyter")
        assert [line for line in reloaded.stdout.splitlines() if "c.Qwen3Magics" in line] == (
            list(refusals.values())
        ), reloaded.stdout
        assert "c.Qwen3Magics" not in ok(kernel, "%qwen3 --no-think --max-new-tokens 2 hi").stdout
        ok(kernel, "%unload_ext qwen3_jupyter")
        ok(kernel, "get_ipython().config.Qwen3Magics.stream_interval = float('nan')")
        loaded = ok(kernel, "%load_ext qwen3_jupyter")
        assert "c.Qwen3Magics.stream_interval = nan is refused (must be a number of seconds" in (
            loaded.stdout
        ), loaded.stdout
        assert kernel.value(f"{MAGICS}.stream_interval") == 0.1
    finally:
        kernel.shutdown()


def test_a_refusal_of_the_kernels_start_is_not_said_once_config_set_that_option(
    kernel_env: dict[str, str], tmp_path: Path
) -> None:
    """Said at the first call, a refusal the user had already put right with `%config` was
    stale, also when set to the value the refusal left (no change event); the one still true
    is said."""
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(KERNEL_CONFIG)
    kernel = Kernel({**kernel_env, "IPYTHONDIR": str(tmp_path / "ipython")})
    try:
        ok(kernel, "%config Qwen3Magics.stream_interval = 0.1")
        first = ok(kernel, "%qwen3 --no-think --max-new-tokens 2 hi")
        said = [line for line in first.stdout.splitlines() if "c.Qwen3Magics" in line]
        assert said == [
            "[qwen3] c.Qwen3Magics.modle is not an option (did you mean model?): ignored"
        ], first.stdout
    finally:
        kernel.shutdown()


def test_config_refuses_a_stream_interval_that_never_or_always_updates(kernel: Kernel) -> None:
    """-1 updated the display at every token, NaN and inf never, without a word."""
    for bad in ("-1", "float('nan')", "float('inf')"):
        ex = kernel.run(f"%config Qwen3Magics.stream_interval = {bad}")
        assert "must be a number of seconds, 0 or more" in ex.stdout + ex.stderr, ex.messages
    assert kernel.value(f"{MAGICS}.stream_interval") == 0.1
    ok(kernel, "%config Qwen3Magics.stream_interval = 0")  # 0: at every token, on purpose
    ok(kernel, "%config Qwen3Magics.stream_interval = 0.1")


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("1", True),
        ("true", True),
        (" Yes ", True),
        ("on", True),
        ("0", False),
        ("OFF", False),
        ("no", False),
        ("", None),
        ("maybe", None),
    ],
)
def test_every_switch_reads_yes_and_no_alike(
    monkeypatch: pytest.MonkeyPatch, value: str, on: bool | None
) -> None:
    monkeypatch.setenv("QWEN3_JUPYTER_SOME_SWITCH", value)
    for default in (True, False):
        assert switch("QWEN3_JUPYTER_SOME_SWITCH", default) is (default if on is None else on)


def test_allow_download_true_allows_and_an_unreadable_value_is_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ALLOW_DOWNLOAD=true` counted as no, and the error said to set the variable the user had
    set. (Offline here: an allowed download fails with the hub's own reason.)"""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QWEN3_JUPYTER_ALLOW_DOWNLOAD", "true")
    with pytest.raises(ModelError, match="downloading it failed"):
        _from_hf_cache("someorg/no-such-model")
    monkeypatch.setenv("QWEN3_JUPYTER_ALLOW_DOWNLOAD", "sure")
    with pytest.raises(ModelError) as refused:
        _from_hf_cache("someorg/no-such-model")
    assert str(refused.value).endswith(
        "$QWEN3_JUPYTER_ALLOW_DOWNLOAD='sure' is not a yes: set QWEN3_JUPYTER_ALLOW_DOWNLOAD=1 "
        "to allow downloading"
    )
