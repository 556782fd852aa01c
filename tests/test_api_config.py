"""The Python API reads `%config Qwen3Magics.*` as the magic does: the argument, then the
environment variable, then the config option, then the default (README "Models")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel import Kernel, ok
from tests.scripted_server import ScriptedServer

SETUP = """
import os
import qwen3_jupyter
from qwen3_jupyter.session import SESSION
os.environ.pop('QWEN3_JUPYTER_MODEL', None)
"""


@pytest.fixture(scope="module")
def k(kernel: Kernel) -> Iterator[Kernel]:
    ok(kernel, SETUP)
    yield kernel


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(model="m1") as scripted:
        yield scripted


def test_the_configured_model_is_what_generate_batch_and_inference_load(k: Kernel) -> None:
    """Before, both went to the default (Qwen/Qwen3-1.7B) with the config naming tiny."""
    ok(k, "%config Qwen3Magics.model = 'tiny'")
    ok(
        k,
        "SESSION.unload()\nr = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, "
        "progress=False)",
    )
    assert k.value("r[0].model") == "tiny"
    ok(
        k,
        "SESSION.unload()\n"
        "with qwen3_jupyter.inference(max_new_tokens=2) as chat:\n"
        "    x = chat('hi')",
    )
    assert k.value("x.model") == "tiny"


def test_the_argument_and_the_environment_come_before_the_config(k: Kernel) -> None:
    ok(k, "%config Qwen3Magics.model = 'no-such/model-anywhere'")
    try:
        ok(
            k,
            "SESSION.unload()\nr = qwen3_jupyter.generate_batch(['hi'], model='tiny', "
            "max_new_tokens=2, progress=False)",
        )
        assert k.value("r[0].model") == "tiny"
        ok(
            k,
            "SESSION.unload()\nos.environ['QWEN3_JUPYTER_MODEL'] = 'tiny'\n"
            "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)",
        )
        assert k.value("r[0].model") == "tiny"
    finally:
        ok(k, "os.environ.pop('QWEN3_JUPYTER_MODEL', None)\n%config Qwen3Magics.model = 'tiny'")


def test_the_configured_device_and_decode_are_used(k: Kernel) -> None:
    ok(k, "%config Qwen3Magics.device = 'gpu'")
    try:
        _refused(
            k,
            "qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)",
            "'gpu' is not a device",
        )
        _refused(
            k, "qwen3_jupyter.inference(max_new_tokens=2).__enter__()", "'gpu' is not a device"
        )
        ok(
            k,
            "r = qwen3_jupyter.generate_batch(['hi'], device='cpu', max_new_tokens=2, "
            "progress=False)",
        )
    finally:
        ok(k, "%config Qwen3Magics.device = ''")
    ok(k, "%config Qwen3Magics.decode = 'sideways'")
    try:
        _refused(
            k,
            "qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)",
            "'sideways'",
        )
        ok(
            k,
            "r = qwen3_jupyter.generate_batch(['hi'], decode='eager', max_new_tokens=2, "
            "progress=False)",
        )
    finally:
        ok(k, "%config Qwen3Magics.decode = 'auto'")


def _refused(k: Kernel, code: str, reason: str) -> None:
    bad = k.run(code)
    assert bad.status == "error" and reason in bad.reply["evalue"], bad.reply


def test_the_configured_server_answers_the_python_api(k: Kernel, server: ScriptedServer) -> None:
    """Before, generate_batch ran on the local model with a server configured."""
    url = server.url("ok")
    ok(k, f"%config Qwen3Magics.server = {url!r}")
    try:
        ok(
            k,
            "r = qwen3_jupyter.generate_batch(['hi'], model='m1', max_new_tokens=2, "
            "progress=False)",
        )
        assert k.value("(r[0].engine, r[0].answer)") == ("remote", "Hello world")
        ok(
            k,
            "with qwen3_jupyter.inference(model='m1', max_new_tokens=2) as chat:\n"
            "    x = chat('hi')",
        )
        assert k.value("x.engine") == "remote"
    finally:
        ok(k, "%config Qwen3Magics.server = ''")
    ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
    assert k.value("r[0].engine") == "eager"


def test_the_environment_comes_before_the_configured_device_for_the_magic_and_the_api(
    k: Kernel,
) -> None:
    """One order for both (README "Models"): flag or argument, environment, config, auto."""
    ok(k, "%config Qwen3Magics.device = 'gpu'")
    try:
        ok(k, "os.environ['QWEN3_JUPYTER_DEVICE'] = 'cpu'")
        ok(k, "%qwen3 --no-think --max-new-tokens 2 hi")
        assert k.value("_qwen3.device") == "cpu"
        ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
        assert k.value("r[0].device") == "cpu"
    finally:
        ok(k, "os.environ.pop('QWEN3_JUPYTER_DEVICE', None)\n%config Qwen3Magics.device = ''")


def test_a_dtype_in_the_environment_after_the_load_is_used(k: Kernel) -> None:
    """$QWEN3_JUPYTER_DTYPE set once a model was loaded was read by nobody: the loaded dtype
    stayed, and the config option it hid from the call did not apply either."""
    ok(k, "%qwen3 --model tiny --dtype float32 --no-think --max-new-tokens 2 hi")
    try:
        ok(k, "os.environ['QWEN3_JUPYTER_DTYPE'] = 'bf16'\n%config Qwen3Magics.dtype = 'float16'")
        ok(k, "%qwen3 --no-think --max-new-tokens 2 hi")
        assert k.value("SESSION.loaded.dtype") == "bfloat16"
        ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
        assert k.value("SESSION.loaded.dtype") == "bfloat16", "the API reloaded it"
        ok(k, "os.environ['QWEN3_JUPYTER_DTYPE'] = 'int8'")
        failed = k.run("%qwen3 --no-think --max-new-tokens 2 hi")
        assert "$QWEN3_JUPYTER_DTYPE='int8' is not one of" in failed.stderr, failed.stderr
    finally:
        ok(k, "os.environ.pop('QWEN3_JUPYTER_DTYPE', None)\n%config Qwen3Magics.dtype = ''")
    ok(k, "%qwen3 --dtype float32 --no-think --max-new-tokens 2 hi")


def test_a_model_named_in_the_config_after_the_load_is_the_one_used(
    k: Kernel, tmp_path: Path
) -> None:
    """The quickstart says to change its `%config Qwen3Magics.model` cell for real weights:
    once a model was loaded, the new name (or $QWEN3_JUPYTER_MODEL) was ignored without a word.
    A name that did not change does not undo a `--model` given since."""
    folder = tmp_path / "ckpt"
    ok(k, "%config Qwen3Magics.model = 'tiny'")
    ok(k, "%qwen3 --no-think --max-new-tokens 2 hi")
    ok(
        k,
        f"SESSION.loaded.model.save_pretrained({str(folder)!r})\n"
        f"SESSION.loaded.tokenizer.save_pretrained({str(folder)!r})",
    )
    try:
        ok(k, "%config Qwen3Magics.model = '/no/such/model'")
        for _ in range(2):  # the second answered with tiny, the failed switch forgotten
            assert "does not exist" in k.run("%qwen3 --no-think --max-new-tokens 2 hi").stderr
        ok(k, f"%config Qwen3Magics.model = {str(folder)!r}")
        ok(k, "%qwen3 --no-think --max-new-tokens 2 hi")
        assert k.value("SESSION.loaded.name") == str(folder)
        ok(k, "%qwen3 --model tiny --no-think --max-new-tokens 2 hi")
        ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
        assert k.value("(SESSION.loaded.name, r[0].model)") == ("tiny", "tiny"), "--model stays"
        ok(k, "%config Qwen3Magics.model = 'tiny'")  # the loaded one: nothing to switch
        ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
        ok(k, f"os.environ['QWEN3_JUPYTER_MODEL'] = {str(folder)!r}")  # wins over the config
        ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
        assert k.value("r[0].model") == str(folder)
    finally:
        ok(k, "os.environ.pop('QWEN3_JUPYTER_MODEL', None)\n%config Qwen3Magics.model = 'tiny'")
    ok(k, "%qwen3 --no-think --max-new-tokens 2 hi")
    assert k.value("SESSION.loaded.name") == "tiny"
