"""The Python API reads `%config Qwen3Magics.*` as the magic does: the argument, then the
environment variable, then the config option, then the default (README "Models")."""

from __future__ import annotations

import time
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


def test_a_bad_configured_value_is_named_as_configured_not_as_a_flag(k: Kernel) -> None:
    """`%config Qwen3Magics.device = 'mps'` was refused as "--device mps", a flag never typed,
    and a configured model path that does not exist said "point --model at…"; the environment
    variable is named as itself."""
    ok(k, "%qwen3 --model tiny --no-think --max-new-tokens 2 hi")
    try:
        ok(k, "%config Qwen3Magics.device = 'mps'")
        said = k.run("%qwen3 --no-think --max-new-tokens 2 hi").stderr.strip()
        assert said.endswith(
            "%config Qwen3Magics.device = 'mps': no mps device here; use --device cpu"
        ), said
        _refused(
            k,
            "qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)",
            "%config Qwen3Magics.device = 'mps': no mps device here; use device='cpu'",
        )
        ok(k, "%config Qwen3Magics.device = ''\n%config Qwen3Magics.model = '/no/such/ckpt'")
        said = k.run("%qwen3 --no-think --max-new-tokens 2 hi").stderr
        assert "point %config Qwen3Magics.model at the folder holding config.json" in said, said
        ok(k, "os.environ['QWEN3_JUPYTER_MODEL'] = '/etc/hostname'")
        said = k.run("%qwen3 --no-think --max-new-tokens 2 hi").stderr
        assert "$QWEN3_JUPYTER_MODEL=/etc/hostname: a file; point at the folder" in said, said
    finally:
        ok(
            k,
            "os.environ.pop('QWEN3_JUPYTER_MODEL', None)\n%config Qwen3Magics.device = ''\n"
            "%config Qwen3Magics.model = 'tiny'",
        )
    ok(k, "%qwen3 --model tiny --no-think --max-new-tokens 2 hi")


def test_a_bad_decode_mode_is_refused_before_the_model_changes(k: Kernel, tmp_path: Path) -> None:
    """A typo in `%config Qwen3Magics.decode` was refused only after the call had unloaded the
    kernel's model and loaded the one it named; from Python, `decode='eagre'` after loading."""
    folder = tmp_path / "other"
    ok(k, "%qwen3 --model tiny --no-think --max-new-tokens 2 hi")
    ok(
        k,
        f"SESSION.loaded.model.save_pretrained({str(folder)!r})\n"
        f"SESSION.loaded.tokenizer.save_pretrained({str(folder)!r})\n"
        "from qwen3_jupyter.models import HOLDER\nloads = HOLDER.loads",
    )
    try:
        ok(k, "%config Qwen3Magics.decode = 'fastest'")
        said = k.run(f"%qwen3 --model {folder} --no-think --max-new-tokens 2 hi").stderr
        assert "%config Qwen3Magics.decode = 'fastest' is not a decode mode: one of auto" in said
    finally:
        ok(k, "%config Qwen3Magics.decode = 'auto'")
    _refused(
        k,
        f"qwen3_jupyter.generate_batch(['hi'], model={str(folder)!r}, decode='eagre')",
        "decode='eagre' is not a decode mode: one of auto, fast, eager",
    )
    assert k.value("(SESSION.loaded.name, HOLDER.loads - loads)") == ("tiny", 0)


def test_local_only_arguments_with_a_configured_server_are_refused(
    k: Kernel, server: ScriptedServer
) -> None:
    """The magic refuses `--device` with a server; `generate_batch(device='cuda')` and
    `inference(decode='fast')` answered from the server without a word."""
    ok(k, f"%config Qwen3Magics.server = {server.url('ok')!r}")
    try:
        _refused(
            k,
            "qwen3_jupyter.generate_batch(['hi'], model='m1', device='cuda', dtype='bf16')",
            "device='cuda' and dtype='bf16' apply to a model in this kernel, not with the "
            'server set by %config Qwen3Magics.server (server="" uses the model in this kernel)',
        )
        _refused(
            k,
            "with qwen3_jupyter.inference(model='m1', decode='fast') as chat:\n    chat('hi')",
            "decode='fast' applies to a model in this kernel",
        )
        secret = "http://alice:s3cret@127.0.0.1:9/v1?api_key=sk-XYZ"
        refused = k.run(f"qwen3_jupyter.generate_batch(['hi'], server={secret!r}, dtype='bf16')")
        said = refused.reply["evalue"]
        assert "not with server='http://***@127.0.0.1:9/v1'" in said, said  # no credential
        ok(k, "r = qwen3_jupyter.generate_batch(['hi'], model='m1', progress=False)")
        assert k.value("r[0].engine") == "remote"
    finally:
        ok(k, "%config Qwen3Magics.server = ''")


def test_a_device_written_another_way_and_a_padded_setting_keep_the_model(k: Kernel) -> None:
    """`--device cpu:0` after a load on `cpu` reloaded the model (on a GPU: `cuda:0` after the
    automatic `cuda`, with the fast path's compile and capture again); and a `%config` value
    with a stray space failed in the magic ("model 'tiny ' not found") but not from Python."""
    ok(k, "%qwen3 --model tiny --device cpu --no-think --max-new-tokens 2 hi")
    ok(k, "from qwen3_jupyter.models import HOLDER\nloads = HOLDER.loads")
    ok(k, "%qwen3 --device cpu:0 --no-think --max-new-tokens 2 hi")
    ok(k, "r = qwen3_jupyter.generate_batch(['hi'], device='cpu:0', progress=False)")
    ok(k, "%qwen3 --device cpu --no-think --max-new-tokens 2 hi")
    assert k.value("HOLDER.loads - loads") == 0, "reloaded for the same device"
    ok(k, "%qwen3 --dtype bf16 --no-think --max-new-tokens 2 hi\nloads = HOLDER.loads")
    ok(k, '%qwen3 --model "tiny " --no-think --max-new-tokens 2 hi')
    ok(k, "os.environ['QWEN3_JUPYTER_MODEL'] = 'tiny '")
    ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
    ok(k, "os.environ.pop('QWEN3_JUPYTER_MODEL')")
    assert k.value("(HOLDER.loads - loads, SESSION.loaded.dtype)") == (0, "bfloat16")
    ok(k, "%qwen3 --dtype float32 --no-think --max-new-tokens 2 hi\nloads = HOLDER.loads")
    try:
        ok(k, "%config Qwen3Magics.model = 'tiny '\n%config Qwen3Magics.device = ' cpu'")
        ok(k, "%qwen3 --no-think --max-new-tokens 2 hi")
        ok(k, "r = qwen3_jupyter.generate_batch(['hi'], max_new_tokens=2, progress=False)")
        assert k.value("(HOLDER.loads - loads, SESSION.loaded.device)") == (0, "cpu")
    finally:
        ok(k, "%config Qwen3Magics.model = 'tiny'\n%config Qwen3Magics.device = ''")


def test_a_server_stream_that_fails_after_text_leaves_it_in_qwen3(
    k: Kernel, server: ScriptedServer
) -> None:
    """A `%qwen3 --server` answer cut after some text lost that text ("Hello wor" here, minutes
    of generation on a real server): the one-line error now says where it is."""
    server.errors_left = 1
    failed = k.run(f"%qwen3 --server {server.url('retryable')} --model m1 hi")
    assert failed.status == "error"
    message = failed.stderr.strip()
    assert message.startswith("UsageError: ") and len(message.splitlines()) == 1, message
    assert message.endswith("(the 2 tokens that came: _qwen3)"), message
    assert k.value("(_qwen3.answer, _qwen3.stop_reason)") == ("Hello wor", "error")


def test_an_interrupt_while_the_server_lists_its_models_does_not_speak_of_a_local_model(
    k: Kernel, server: ScriptedServer
) -> None:
    """Stopped while a hung server was asked which model to use (no --model), a served call
    said "your variables and the loaded model are kept": it never touched a model here."""
    asked = len(server.requests)
    msg_id = k.start(f"%qwen3 --server {server.url('hung')} hi")
    deadline = time.monotonic() + 30
    while not any(path.endswith("/models") for _, path in server.requests[asked:]):
        assert time.monotonic() < deadline, server.requests
        time.sleep(0.05)
    k.interrupt()
    stopped = k.collect(msg_id, timeout=30)
    said = stopped.stderr.strip()
    assert stopped.status == "error" and said.startswith("UsageError: interrupted"), said
    assert said.endswith("your variables are kept; run the cell again"), said
