"""The tests drive real kernels with the same driver the benchmarks use."""

from qwen3_jupyter.bench._kernel import Execution, Kernel

__all__ = ["Execution", "Kernel"]
