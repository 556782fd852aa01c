"""Per-kernel state shared by the magics and the Python API: the model, the chat, the last call.

Kept apart from the magics so cleanup, batching and `inference()` can reach the loaded model
without importing IPython glue.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .asked import Asked
from .engines import Engine, KeptMemory, decode_mode, local_engine
from .generation import Conversation, GenerationOptions, Result
from .hub_progress import Progress
from .interrupts import CELL_INTERRUPTS, import_whole
from .model_use import ModelBusy
from .models import (
    DEFAULT_MODEL,
    DEVICE_ENV,
    DTYPE_ENV,
    HOLDER,
    MODEL_ENV,
    LoadedModel,
    ModelChoice,
    ModelError,
    asked_model,
    pick_device,
    pick_dtype,
    same_device,
    same_model,
)
from .weights_held import ReleasedWeights, StillHeld


def _why_no_answer(result: Result, options: GenerationOptions, footer_follows: bool) -> str:
    """What an empty --chat turn's notice adds: the advice to raise the budget only where the
    budget ended it (a model that ended its turn at once, or a server's own limit, was told to
    raise --max-new-tokens), and not where a footer right below says it already."""
    if result.stop_reason == "eos":
        return " (the model ended its turn without one)"
    if result.stop_reason != "length" or footer_follows:
        return ""
    return " (raise --max-new-tokens" + (", or --no-think" if options.think else "") + ")"


def loaded_notice(loaded: LoadedModel, replaced: str | None = None) -> str:
    """`loaded tiny (float32) on cpu in 0.6 s · 37.4 MiB of weights, kept until ...`; the
    first use of an embedded model adds how much of that time building it took."""
    from .memory import format_bytes
    from .models import weights_bytes

    what = _described(loaded)
    size = format_bytes(weights_bytes(loaded.model))
    took = f"{loaded.load_seconds:.1f} s"
    if loaded.build_seconds and loaded.build_waited:
        took += f" ({loaded.build_seconds:.1f} s of it waiting for another kernel's build of it)"
    elif loaded.build_seconds:
        took += f" ({loaded.build_seconds:.1f} s of it the first build, once per cache)"
    notice = f"loaded {what} in {took} · {size} of weights, kept until %qwen3 --unload"
    if loaded.embedded:
        notice += " · random weights: its answers are noise"
    if replaced is not None:
        notice += f" · {replaced} was unloaded for it"
    return notice


def _described(loaded: LoadedModel) -> str:
    """`tiny (float32) on cpu`: a loaded model as the load line names it (and the one it
    replaced)."""
    return f"{loaded.name} ({loaded.dtype}) on {loaded.device}"


def _thinking_decided(model: str, thinks: bool) -> str:
    return (
        f"{model} always thinks (its chat template opens <think>): --no-think has no effect"
        if thinks
        else f"{model} does not think (its chat template has no thinking switch): answering "
        "without, with the non-thinking sampling defaults"
    )


@dataclass(frozen=True)
class UnloadReport:
    """What `--unload` did, with the proof that the model object is gone."""

    name: str | None
    memory_kind: str
    before: int
    after: int
    model_freed: bool
    closed: tuple[str, ...] = ()
    """The kept engines closed with it ('fast', or a server's URL)."""
    held: StillHeld | None = None
    """What of the model's weights something still holds, and the names that do."""

    @property
    def servers(self) -> int:
        """How many server connections were closed."""
        return sum(1 for key in self.closed if key != "fast")

    @property
    def freed(self) -> int:
        return max(0, self.before - self.after)

    @property
    def summary(self) -> str:
        """The one line `%qwen3 --unload` prints: what went, and the proof."""
        from .memory import format_bytes

        servers = (
            f"closed the connection{'s' if self.servers > 1 else ''} to {self.servers} "
            f"server{'s' if self.servers > 1 else ''}"
            if self.servers
            else ""
        )
        if self.name is None:
            closed = f" · {servers}" if servers else ": nothing to unload"
            return f"no model loaded in this kernel{closed}"
        held = self.held
        if held is None:
            proof = (
                "model object freed"
                if self.model_freed
                else "model object STILL referenced elsewhere: del your own references to it"
            )
        else:
            start = "model object freed, but" if self.model_freed else "model object STILL held:"
            proof = (
                f"{start} {format_bytes(held.nbytes)} of its weights still in memory, "
                f"{held.holders()}"
            )
        return (
            f"unloaded {self.name} · {proof} · {self.memory_kind} "
            f"{format_bytes(self.before)} -> {format_bytes(self.after)} "
            f"(freed {format_bytes(self.freed)})" + (f" · {servers}" if servers else "")
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """`qwen3_jupyter.unload()` as a cell's last line shows the magic's line."""
        printer.text(f"UnloadReport: {self}")

    def __str__(self) -> str:
        """`print(qwen3_jupyter.unload())` in a script: the line, not the fields."""
        return self.summary


class Notices:
    """The notices engines leave, each kept for the thread whose call left it.

    Why: a `generate_batch` in a thread and a `%qwen3` cell each print the notices of their
    own call ("compiled the decode step …") when they end; with one shared list, whichever call
    ended first would print both, the other's in the wrong cell."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: dict[int, list[str]] = {}

    def append(self, text: str) -> None:
        with self._lock:
            self._by_thread.setdefault(threading.get_ident(), []).append(text)

    def take(self) -> list[str]:
        """This thread's notices, oldest first; they are gone from here."""
        with self._lock:
            return self._by_thread.pop(threading.get_ident(), [])


@dataclass
class Session:
    """The kernel's one model holder, conversation and last result."""

    conversation: Conversation = field(default_factory=Conversation)
    last_result: Result | None = None
    result_listeners: list[Callable[[Result], None]] = field(default_factory=list)
    _model_setting: str | None = None
    """What `%config Qwen3Magics.model` or $QWEN3_JUPYTER_MODEL said at the last load."""
    _asked_setting: str | None = None
    """What they said at the last `choice`."""
    engines: dict[str, Engine] = field(default_factory=dict)
    """The engines that hold something between calls, by key ('fast', or a server's URL);
    the eager engine holds nothing and is made per call."""
    notices: Notices = field(default_factory=lambda: Notices())
    """One-line notices an engine left for the next display (a fallback to eager, say)."""
    told_thinking: set[tuple[str, bool]] = field(default_factory=set)
    """(model, thinks) pairs `follow_template` has said."""
    released: ReleasedWeights | None = None
    """The weights of the model released last, while something may still hold them."""

    def follow_template(
        self,
        engine: Engine,
        options: GenerationOptions,
        tell: Callable[[str], None] | None = None,
    ) -> GenerationOptions:
        """`options` as the engine's model follows them. The first time in this kernel that a
        model's chat template overrides the thinking asked for, `tell` (default: this call's
        notices) says so: an API caller asking think=True of an Instruct-2507 got no thinking
        and no word why. Once per model and way, as every call on that model would repeat it."""
        followed = engine.options_for_model(options)
        told = (engine.model_name, followed.think)
        if followed.think != options.think and told not in self.told_thinking:
            self.told_thinking.add(told)
            (tell or self.notices.append)(_thinking_decided(*told))
        return followed

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
        configured_device: str | None = None,
        configured_dtype: str | None = None,
    ) -> ModelChoice:
        """Resolve what to load from flags, environment and configuration (`%config
        Qwen3Magics.*`: kept apart from the flags, so that an error names the one the user set).

        Without an explicit device or dtype, the model already loaded is reused as it is when
        no model or that same one is named: a kernel loads its model once and every later call
        shares it (naming it again must not silently reload it in another dtype).
        """
        # The first step of a kernel's first call. Qwen3's model code too: importing it imports
        # a thousand modules (sympy among them), and an interrupt inside left one half made, so
        # every later load failed ("Could not import module 'Qwen3ForCausalLM'") until a restart.
        import_whole(*FIRST_CALL_IMPORTS)
        if model is not None and not model.strip():
            raise ModelError("--model needs a name (e.g. Qwen/Qwen3-1.7B, or tiny)")
        model = model.strip() if model is not None else None  # `'tiny '` is the loaded tiny
        loaded = HOLDER.loaded
        configured_model = (configured_model or "").strip() or None
        setting = (os.environ.get(MODEL_ENV) or "").strip() or configured_model
        changed = setting != self._model_setting
        self._asked_setting = setting  # taken as seen once a load succeeds (`load`)
        switched_to: Asked | None = None
        if (
            model is None
            and changed
            and setting
            and loaded
            and not same_model(setting, loaded.name)
        ):
            # `%config Qwen3Magics.model` or $QWEN3_JUPYTER_MODEL changed since the last call:
            # it names the model now (the loaded one answered on, without a word). Unchanged,
            # it does not undo a `--model` the user gave since.
            switched_to = asked_model(None, configured_model)
            model = setting
        if loaded is not None and (model is None or same_model(model, loaded.name)):
            # $QWEN3_JUPYTER_DEVICE/_DTYPE set after the load say a device or dtype too (they
            # were read at the first load only, and hid the config option from later calls).
            name, asked = loaded.name, None
            asked_device = Asked.first("device", device, DEVICE_ENV, configured_device)
            chosen_device = (
                pick_device(device, configured_device) if asked_device else loaded.device
            )
            asked_dtype = Asked.first("dtype", dtype, DTYPE_ENV, configured_dtype)
            if not asked_dtype and same_device(chosen_device, loaded.device):
                return ModelChoice(name=name, device=loaded.device, dtype=loaded.dtype)
        else:
            asked = switched_to or asked_model(model, configured_model)
            name = asked.value if asked is not None else DEFAULT_MODEL
            chosen_device = pick_device(device, configured_device)
        dtype_chosen = pick_dtype(chosen_device, dtype, configured_dtype)
        return ModelChoice(name=name, device=chosen_device, dtype=dtype_chosen, asked=asked)

    @property
    def loaded(self) -> LoadedModel | None:
        return HOLDER.loaded

    def load(self, choice: ModelChoice, progress: Progress | None = None) -> LoadedModel:
        """The model for `choice`; a call that loaded it says so, how long it took and what it
        keeps (why the first call was slow, and why memory went up and stays up)."""
        loads, before = HOLDER.loads, HOLDER.loaded
        replaced = _described(before) if before else None
        before = None  # not kept alive while the next one loads
        loaded = HOLDER.get(choice, progress)
        # The setting this choice read is seen now: a failed or interrupted switch to it is
        # tried again by the next call (it answered with the old model without a word).
        self._model_setting = self._asked_setting
        if HOLDER.loads != loads:
            notice = loaded_notice(loaded, replaced)
            held = self.released_still_held()  # unloaded earlier, or for this one
            if held is not None:
                from .weights_held import held_notice

                notice += f" · {held_notice(held)}"
            self.notices.append(notice)
        return loaded

    def engine(
        self,
        *,
        model: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        decode: str | None = None,
        server: str | None = None,
        configured_model: str | None = None,
        configured_device: str | None = None,
        configured_dtype: str | None = None,
        configured_decode: str | None = None,
        configured_server: str | None = None,
        progress: Progress | None = None,
    ) -> Engine:
        """The engine for one call: a server's when a server is named (flag, then
        $QWEN3_JUPYTER_SERVER, then config), else this kernel's model through the fast or the
        eager path (flag, then $QWEN3_JUPYTER_DECODE, then config; default: fast on CUDA).
        The arguments are the call's own; the configured ones `%config Qwen3Magics.*`."""
        from .engines import EngineError, check_decode, check_server, server_source, server_url
        from .engines.urls import shown_address

        url = server_url(server, configured_server)
        if url is not None:
            check_server(server, configured_server)
            # As the magic refuses --device with a server: the call would ignore them silently.
            asked = {"device": device, "dtype": dtype, "decode": decode}
            local_only = [f"{name}={value!r}" for name, value in asked.items() if value]
            if local_only:
                verb = "apply" if len(local_only) > 1 else "applies"
                raise EngineError(
                    f"{' and '.join(local_only)} {verb} to a model in this kernel, not with "
                    f"{f'server={shown_address(server)!r}' if server else server_source(None)}"
                )
            return self.remote_engine(url, model)
        check_decode(decode, configured_decode)  # a bad one: refused before any load
        choice = self.choice(
            model, device, dtype, configured_model, configured_device, configured_dtype
        )
        loaded = self.load(choice, progress)
        return self.local_engine(loaded, decode_mode(decode, configured_decode, loaded.device))

    def local_engine(
        self, loaded: LoadedModel, mode: str, rebuilds: str = "the next fast call"
    ) -> Engine:
        """The eager or the fast engine for `loaded`. Choosing eager gives back everything the
        fast engine kept, with a notice saying how much (`rebuilds`: the call that builds it
        again); the fast engine is kept (with its decode cache) across calls."""
        engine = local_engine(loaded, mode, self.engines.get("fast"), self.notices.append)
        if engine.kind == "fast":
            self.engines["fast"] = engine
        else:
            notice = self.give_back_fast(rebuilds)
            if notice:
                self.notices.append(notice)
        return engine

    def give_back_fast(self, rebuilds: str) -> str | None:
        """Close the fast engine; one line measuring what it gave back (None: it held nothing)."""
        from .generation import current_memory
        from .memory import format_bytes

        fast, loaded = self.engines.get("fast"), self.loaded
        kept = fast.kept_memory() if fast is not None else ()
        if loaded is None or not kept:
            self.close_engine("fast")
            return None
        if not loaded.device.startswith("cuda"):
            from .memory import trim_host_heap

            trim_host_heap()  # slack freed earlier (a compile's) is not the cache's to report
        before, kind = current_memory(loaded.device)
        self.close_engine("fast")
        after, _ = current_memory(loaded.device)
        what = "; ".join(k.describe(why=False) for k in kept)
        return (
            f"gave back {what} · {kind} {format_bytes(before)} -> {format_bytes(after)} "
            f"(freed {format_bytes(max(0, before - after))}); {rebuilds} builds it again"
        )

    def remote_engine(self, url: str, model: str | None = None) -> Engine:
        """The one engine (and connection pool) this kernel keeps per server, however its
        URL is written (`server_key`)."""
        from .engines.remote import RemoteEngine
        from .engines.urls import server_key

        key = server_key(url)
        engine = self.engines.get(key)
        if not isinstance(engine, RemoteEngine):
            engine = RemoteEngine(url, notify=self.notices.append)
            self.engines[key] = engine
        return engine.with_model(model)

    def model_released(self, loaded: LoadedModel) -> None:
        """The kernel's model is about to go (a switch, an unload): the fast engine built on it
        closes first (its compiled steps hold the module itself), and its weights are noted,
        to tell whether something of the user's still holds them after (`weights_held`)."""
        from .weights_held import released_weights

        fast = self.engines.get("fast")
        if getattr(fast, "loaded", None) is loaded:
            self.close_engine("fast")
        if loaded.model is not None:
            self.released = released_weights(loaded.name, loaded.model)

    def released_still_held(self) -> StillHeld | None:
        """What of the last released model something still holds (None: nothing; the note of
        it is then dropped)."""
        from .holders import running_shell
        from .weights_held import still_held

        if self.released is None:
            return None
        held = still_held(self.released, running_shell())
        if held is None:
            self.released = None
        return held

    def close_engine(self, key: str) -> bool:
        """Close one kept engine (its memory or connections go back); False if there was none.
        An engine that cannot close now (ModelBusy: another thread decodes on it) stays kept."""
        engine = self.engines.get(key)
        if engine is None:
            return False
        engine.close()
        self.engines.pop(key, None)
        return True

    def close_engines(self) -> list[str]:
        """Close every kept engine; the keys of those that were open."""
        closed = []
        for key in list(self.engines):
            try:
                self.close_engine(key)
            except ModelBusy:  # another thread decodes on it: kept, the others still close
                continue
            closed.append(key)
        return closed

    def kept_memory(self) -> tuple[KeptMemory, ...]:
        """What the kept engines hold on purpose between calls."""
        return tuple(k for e in list(self.engines.values()) for k in e.kept_memory())

    def take_notices(self) -> list[str]:
        return self.notices.take()

    def ask(
        self,
        engine: Engine,
        prompt: str,
        options: GenerationOptions,
        chat: bool = False,
        on_text: Callable[[str], None] | None = None,
        memory_budget: int | None = None,
        stream_interval: float = 0.1,
        footer_follows: bool = False,
    ) -> Result:
        """One generation; with `chat`, the prompt and answer join the conversation. Not
        started when a call earlier in the cell was interrupted (KeyboardInterrupt).
        `footer_follows`: the caller shows the footer, which says what to raise for an answer
        cut off, so an empty turn's notice need not say it too."""
        CELL_INTERRUPTS.check()
        history = self.conversation.messages if chat else None
        options = self.follow_template(engine, options)
        if chat:
            options = self.conversation.options_for_turn(options)
        result = engine.generate(
            prompt,
            options,
            history=history,
            on_text=on_text,
            stream_interval=stream_interval,
            memory_budget=memory_budget,
        )
        CELL_INTERRUPTS.note(result.stop_reason == "interrupted")
        if chat and result.stop_reason != "interrupted":
            switched = self.conversation.continued_by(result.model)
            if switched is not None:
                self.notices.append(switched)
            if result.answer.strip():
                self.conversation.keep_turn(options, prompt, result.answer, result.model)
            else:  # an empty assistant turn would be what the next turn builds on
                why = _why_no_answer(result, options, footer_follows)
                self.notices.append(
                    f"this --chat turn has no answer{why}: it was not added to the conversation"
                )
        self.last_result = result
        for listener in list(self.result_listeners):
            try:
                listener(result)
            except Exception:  # a gauge must never break generation
                logging.getLogger(__name__).exception("result listener failed")
        return result

    def unload(self) -> UnloadReport:
        """Close every engine, free the model, and measure it: a weakref to the model object,
        memory before (model and kept decode cache) and after."""
        with HOLDER.in_use("unloading the model"):  # nothing closed if another thread decodes
            return self._unload()

    def _unload(self) -> UnloadReport:
        from .generation import current_memory

        loaded = HOLDER.loaded
        if loaded is None:
            closed = tuple(self.close_engines())
            return UnloadReport(None, "", 0, 0, model_freed=True, closed=closed)
        device, name = loaded.device, loaded.name
        ref = weakref.ref(loaded.model)
        del loaded
        # The young garbage only, so that "before" is not swollen by the last call's: the full
        # pass that frees the model follows (HOLDER.unload), and two full passes took 1.2 s in
        # a kernel of 3.75 M objects.
        gc.collect(1)
        from .memory import trim_host_heap

        if not device.startswith("cuda"):
            trim_host_heap()  # slack freed earlier is not this unload's to report
        before, kind = current_memory(device)
        closed = tuple(self.close_engines())
        HOLDER.unload()
        held = self.released_still_held()
        if not device.startswith("cuda"):  # that walk's own garbage is no memory still held
            trim_host_heap()
        after, _ = current_memory(device)
        freed = ref() is None
        return UnloadReport(name, kind, before, after, freed, closed=closed, held=held)


QWEN3_MODEL_CODE = "transformers.models.qwen3.modeling_qwen3"

FIRST_CALL_IMPORTS = ("torch", "transformers", QWEN3_MODEL_CODE)
"""What a kernel's first call imports before anything else (whole: see `choice`)."""

SESSION = Session()
HOLDER.before_release.append(SESSION.model_released)


def reset_chat() -> str:
    """Clear the kernel's conversation (its turns and its system prompt), as `%qwen3 --reset`
    does: from Python, `chat(..., chat=True)` added to it and nothing cleared it. One line says
    what went."""
    from .said import Said

    turns = len(SESSION.conversation.messages) // 2
    SESSION.conversation.reset()
    if not turns:
        return Said("conversation cleared (it was empty)")
    return Said(f"conversation cleared ({turns} turn{'s' if turns > 1 else ''})")
