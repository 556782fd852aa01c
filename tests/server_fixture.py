"""The endpoint tests drive the same in-process Jupyter server the endpoint benchmark uses."""

from qwen3_jupyter.bench._server import InProcessServer, Response, http, run_cell

__all__ = ["InProcessServer", "Response", "http", "run_cell"]
