"""Shared fixtures: a model cache for the session and real kernels that use it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import background_check
from tests.kernel import Kernel
from tests.kernel_pool import KernelPool

if TYPE_CHECKING:
    from qwen3_jupyter.bench._openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start mypy now, in idle CPU time, when `test_mypy` will judge it.

    With pytest-xdist every worker collects every test: only the first worker starts it
    early; where the test runs on another worker, it starts its own."""
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        return
    if any(item.nodeid.endswith("test_quality.py::test_mypy") for item in session.items):
        background_check.MYPY = background_check.start("mypy")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if background_check.MYPY is not None:  # test_mypy did not run (a -x stop, say)
        background_check.MYPY.stop()
        background_check.MYPY = None


OUTPUT = ROOT / "test-output"


@pytest.fixture(autouse=True)
def interrupts_end_with_the_test() -> Iterator[None]:
    """Each test is a program of its own: outside IPython an interrupt that ended a call stops
    the program's next call, so one an in-process test noted must not stop the next test's."""
    yield
    from qwen3_jupyter.interrupts import CELL_INTERRUPTS

    CELL_INTERRUPTS.forget()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of embedded models for the whole run (the tiny model is built once).

    Set QWEN3_JUPYTER_TEST_CACHE to reuse a cache across runs.
    """
    reuse = os.environ.get("QWEN3_JUPYTER_TEST_CACHE")
    path = Path(reuse) if reuse else tmp_path_factory.mktemp("qwen3-cache")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["QWEN3_JUPYTER_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def kernel_env(model_cache: Path) -> dict[str, str]:
    """Environment of every test kernel: the shared cache, the tiny model, no GPU surprises."""
    return {
        "QWEN3_JUPYTER_CACHE": str(model_cache),
        "QWEN3_JUPYTER_MODEL": "tiny",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.fixture(scope="session")
def kernel_pool(kernel_env: dict[str, str]) -> Iterator[KernelPool]:
    """Kernels started ahead, with torch and transformers imported (see tests/kernel_pool.py)."""
    pool = KernelPool(kernel_env)
    yield pool
    pool.close()


def _new_kernel(request: pytest.FixtureRequest, pool: KernelPool, env: dict[str, str]) -> Kernel:
    """A kernel from the pool, or one started now for a test marked `no_preload` (for the
    module-scoped `kernel`, only a module-level `pytestmark` is seen)."""
    if request.node.get_closest_marker("no_preload") is not None:
        return Kernel(env)
    return pool.take()


@pytest.fixture(scope="module")
def kernel(
    request: pytest.FixtureRequest, kernel_pool: KernelPool, kernel_env: dict[str, str]
) -> Iterator[Kernel]:
    """A real kernel with the extension loaded, shared by the tests of one module."""
    k = _new_kernel(request, kernel_pool, kernel_env)
    try:
        loaded = k.run("%load_ext qwen3_jupyter")
        assert loaded.status == "ok", loaded.error
        yield k
    finally:
        k.shutdown()


@pytest.fixture()
def fresh_kernel(
    request: pytest.FixtureRequest, kernel_pool: KernelPool, kernel_env: dict[str, str]
) -> Iterator[Kernel]:
    """A kernel of its own, for tests that interrupt it or change its global state."""
    k = _new_kernel(request, kernel_pool, kernel_env)
    yield k
    k.shutdown()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts (screenshots, executed notebooks); git ignores it."""
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def openai_server(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenAIServer]:
    """A real OpenAI-compatible server (`transformers serve` of the tiny model, CPU, offline)
    on a free port, shared by the session and stopped at its end."""
    from qwen3_jupyter.bench._openai_server import serve_tiny

    server = serve_tiny(tmp_path_factory.mktemp("openai-server"))
    yield server
    server.stop()
