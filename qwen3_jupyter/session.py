"""Per-kernel state shared by the magics and the Python API: the model, the chat, the last call.

Kept apart from the magics so cleanup, batching and `inference()` can reach the loaded model
without importing IPython glue.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from .generation import Conversation, GenerationOptions, Result, generate
from .models import HOLDER, LoadedModel, ModelChoice, choose_model, pick_device, pick_dtype

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class UnloadReport:
    """What `--unload` did, with the proof that the model object is gone."""

    name: str | None
    memory_kind: str
    before: int
    after: int
    model_freed: bool

    @property
    def freed(self) -> int:
        return max(0, self.before - self.after)


@dataclass
class Session:
    """The kernel's one model holder, conversation and last result."""

    conversation: Conversation = field(default_factory=Conversation)
    last_result: Result | None = None
    result_listeners: list[Callable[[Result], None]] = field(default_factory=list)

    def add_result_listener(self, listener: Callable[[Result], None]) -> Callable[[], None]:
        """Call `listener` with every finished Result (the gauge's latency-decay signal).

        Returns the function that removes it again. A failing listener never fails a call.
        """
        self.result_listeners.append(listener)
        return lambda: (
            self.result_listeners.remove(listener) if listener in self.result_listeners else None
        )

    def choice(
        self,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        configured_model: str | None = None,
    ) -> ModelChoice:
        """Resolve what to load from flags, environment and configuration.

        Without an explicit model, device or dtype, the model already loaded is reused as it
        is: a kernel loads its model once and every later call shares it.
        """
        loaded = HOLDER.loaded
        if loaded is not None and model is None:
            name = loaded.name
            chosen_device = pick_device(device) if device else loaded.device
            if dtype is None and chosen_device == loaded.device:
                return ModelChoice(name=name, device=chosen_device, dtype=loaded.dtype)
        else:
            name = choose_model(model, configured_model)
            chosen_device = pick_device(device)
        return ModelChoice(name=name, device=chosen_device, dtype=pick_dtype(chosen_device, dtype))

    @property
    def loaded(self) -> LoadedModel | None:
        return HOLDER.loaded

    def load(self, choice: ModelChoice, progress: Progress | None = None) -> LoadedModel:
        return HOLDER.get(choice, progress)

    def ask(
        self,
        loaded: LoadedModel,
        prompt: str,
        options: GenerationOptions,
        chat: bool = False,
        on_text: Callable[[str], None] | None = None,
        memory_budget: int | None = None,
        stream_interval: float = 0.1,
    ) -> Result:
        """One generation; with `chat`, the prompt and answer join the conversation."""
        history = self.conversation.messages if chat else None
        result = generate(
            loaded,
            prompt,
            options,
            history=history,
            on_text=on_text,
            stream_interval=stream_interval,
            memory_budget=memory_budget,
        )
        if chat and result.stop_reason != "interrupted":
            self.conversation.messages.append({"role": "user", "content": prompt})
            self.conversation.messages.append({"role": "assistant", "content": result.answer})
        self.last_result = result
        for listener in list(self.result_listeners):
            try:
                listener(result)
            except Exception:  # a gauge must never break generation
                logging.getLogger(__name__).exception("result listener failed")
        return result

    def unload(self) -> UnloadReport:
        """Free the model and measure it: weakref to the model object and memory before/after."""
        from .generation import current_memory

        loaded = HOLDER.loaded
        if loaded is None:
            return UnloadReport(None, "", 0, 0, model_freed=True)
        device, name = loaded.device, loaded.name
        ref = weakref.ref(loaded.model)
        del loaded
        gc.collect()
        before, kind = current_memory(device)
        HOLDER.unload()
        after, _ = current_memory(device)
        return UnloadReport(name, kind, before, after, model_freed=ref() is None)


SESSION = Session()
