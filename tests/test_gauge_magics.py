"""`%qwen3_gauge`'s options through a real kernel (NVML is the fake pynvml, one GPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_nvml import FakeNvml, child_env
from tests.kernel import Kernel, ok

THREADS = "[t.name for t in __import__('threading').enumerate() if t.name.startswith('qwen3')]"
OPEN = "len(__import__('sys').modules['qwen3_jupyter.gauge'].open_gauges())"


@pytest.fixture(scope="module")
def gauge_kernel(
    kernel_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kernel]:
    nvml = child_env(FakeNvml.with_gpus(1), tmp_path_factory.mktemp("fake-nvml"))
    k = Kernel({**kernel_env, **nvml})
    ok(k, "%load_ext qwen3_jupyter")
    yield k
    k.shutdown()


@pytest.mark.parametrize("other", ["--interval 0.2", "--all", "--compact", "--interval 0.5"])
def test_stop_goes_alone(gauge_kernel: Kernel, other: str) -> None:
    """`--stop --interval 0.2` stopped the gauges and dropped --interval without a word;
    `%qwen3 --stop --model tiny` is refused, and so is this, before anything is closed."""
    ok(gauge_kernel, "%qwen3_gauge --interval 0.1\nimport time; time.sleep(0.3)")
    assert gauge_kernel.value(OPEN) == 1 and gauge_kernel.value(THREADS)
    for line in (f"%qwen3_gauge --stop {other}", f"%qwen3_gauge {other} --stop"):
        refused = gauge_kernel.run(line)
        assert refused.reply["ename"] == "UsageError", refused.reply
        assert refused.reply["evalue"] == (
            "--stop goes alone: it closes every gauge and stops the polling thread"
        )
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert gauge_kernel.value(OPEN) == 1 and gauge_kernel.value(THREADS), "nothing closed"
    stopped = ok(gauge_kernel, "%qwen3_gauge --stop")
    assert "gauge stopped (1 closed)" in stopped.stdout
    assert gauge_kernel.value(OPEN) == 0 and gauge_kernel.value(THREADS) == []


def test_a_value_of_the_wrong_kind_is_named_plainly(gauge_kernel: Kernel) -> None:
    """argparse's "argument --interval: invalid float value: 'soon'" as one plain line."""
    refused = gauge_kernel.run("%qwen3_gauge --interval soon")
    assert refused.reply["ename"] == "UsageError", refused.reply
    assert refused.reply["evalue"] == ("--interval needs a number, not 'soon' (see %qwen3_gauge?)")
    assert gauge_kernel.value(OPEN) == 0, "a refused call opened a gauge"
