"""The engine seam: what the magics, batching, `inference()` and the cleanup ask of whatever
generates — a model in this kernel (eager or the compiled fast path) or a remote server.

Callers never ask which engine runs. An engine generates one answer (streamed), a list of
answers (batched, in input order), says what memory it keeps between calls on purpose, drops
per-call leftovers, and gives everything back when closed.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..memory import format_bytes

if TYPE_CHECKING:
    from ..batching import BatchResults
    from ..generation import GenerationOptions, Result

TextCallback = Callable[[str], None]


@dataclass(frozen=True)
class KeptMemory:
    """Memory an engine keeps between calls on purpose, and how to get it back."""

    label: str
    nbytes: int
    device: str
    why: str = "kept for speed"
    give_back: str = "%qwen3 --eager or --unload gives it back"

    def describe(self, why: bool = True) -> str:
        """'decode cache 448 MiB on cuda:0, kept for speed' (without `why`, for a line saying
        it was given back: 'gave back … kept for speed' contradicted itself)."""
        reason = f", {self.why}" if why else ""
        return f"{self.label} {format_bytes(self.nbytes)} on {self.device}{reason}"


def describe_kept(kept: Sequence[KeptMemory]) -> str:
    """One phrase for everything kept ('' when nothing is)."""
    return "; ".join(k.describe() for k in kept)


class EngineError(Exception):
    """A problem with an engine the user can fix (a server down, a wrong model name, a bad
    engine choice); its message is one actionable line. `result`: the partial answer of a
    stream that failed after some text (timed out, stalled, cut), else None. `prompt_index`:
    the batch prompt the error is about, if one (a --file run names its line)."""

    result: Any = None
    prompt_index: int | None = None


class Engine(ABC):
    """Something that turns prompts into Results. Subclasses: eager, fast, remote."""

    kind: str = "engine"
    status: Callable[[str], None] | None = None
    """Where the engine says what it is doing during long work (compiling, connecting); the
    caller sets it for the duration of a call."""

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model this engine answers with (as the user named it, or as the server does)."""

    @property
    @abstractmethod
    def device(self) -> str:
        """Where generation runs: 'cuda', 'cpu', or the server's address."""

    @abstractmethod
    def generate(
        self,
        prompt: str,
        options: GenerationOptions,
        *,
        history: list[dict[str, str]] | None = None,
        on_text: TextCallback | None = None,
        stream_interval: float = 0.1,
        memory_budget: int | None = None,
    ) -> Result:
        """One answer, streamed to `on_text`. An interrupt returns the partial answer with
        stop_reason 'interrupted'; running out of memory raises GenerationOOM."""

    @abstractmethod
    def generate_batch(
        self,
        prompts: Sequence[str],
        options: GenerationOptions,
        *,
        batch_size: int = 4,
        concurrency: int | None = None,
        memory_budget: int | None = None,
        out: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> BatchResults:
        """An answer per prompt, in input order, with a report; finished results are never lost."""

    def options_for_model(self, options: GenerationOptions) -> GenerationOptions:
        """`options` as this engine's model will follow them (as given, by default: a served
        model's template is the server's)."""
        return options

    def kept_memory(self) -> tuple[KeptMemory, ...]:
        """What this engine holds between calls on purpose (nothing, by default)."""
        return ()

    def holdings(self) -> tuple[object, ...]:
        """The objects that hold the kept memory (so `%qwen3_clean --verbose` can name it)."""
        return ()

    def release(self) -> tuple[str, ...]:
        """Drop per-call leftovers (never the kept memory); the names of what was dropped."""
        return ()

    def close(self) -> None:  # noqa: B027 - engines without resources need no close
        """Give back everything this engine holds (kept memory, connections); idempotent."""

    def describe(self) -> str:
        return f"{self.kind} engine for {self.model_name} on {self.device}"
