"""`%qwen3` / `%%qwen3`: parse the line (prompt_line.py), call the layers below, show the results.

Options come first, the prompt is the rest of the line taken verbatim (apostrophes, quotes
and dashes inside a prompt are never parsed); `--` ends the options explicitly. The prompt and
`--system` are text for the model, sent as typed (`--vars` fills `{expression}` in them); other
option values are paths, URLs and numbers, expanded as IPython expands any magic's line.
"""

from __future__ import annotations

import math
import sys
from argparse import Namespace
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Float, TraitError, Unicode, validate

from . import display, lifecycle, magic_config
from .batching import (
    DEFAULT_BATCH_SIZE,
    ResultsFileError,
    check_results_file,
    memory_budget_bytes,
    parse_size,
)
from .engines import (
    Engine,
    EngineError,
    check_decode,
    check_server,
    decode_mode,
    server_source,
    server_url,
)
from .engines.urls import mask_url
from .gauge import inline_gauge
from .generation import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationOOM,
    GenerationOptions,
    Result,
    broken_rules,
)
from .interrupts import CELL_INTERRUPTS
from .magic_args import OneWaySwitch, asks_help, options_of, plain_usage, show_help
from .magic_config import configured_magics
from .model_use import ModelBusy, holding, stop
from .models import DTYPES, ModelError, canonical_dtype, is_loaded_as
from .prompt_files import FilePrompts, PromptFileError, read_prompts
from .prompt_line import expander, parse_line, protect_prompt_lines
from .prompt_vars import PromptVarsError, fill
from .session import SESSION, reset_chat
from .unloading import unload_whole


@magics_class
class Qwen3Magics(Magics):
    """Magics that run Qwen3 inside this kernel."""

    model = Unicode(
        "",
        help="Model id or path used when --model is not given ($QWEN3_JUPYTER_MODEL wins when "
        "set).",
    ).tag(config=True)
    device = Unicode(
        "",
        help="Device override: cpu, cuda, cuda:1 (default: auto; $QWEN3_JUPYTER_DEVICE wins when "
        "set).",
    ).tag(config=True)
    dtype = Unicode(
        "",
        help=f"dtype override: one of {', '.join(DTYPES)} ($QWEN3_JUPYTER_DTYPE wins when set).",
    ).tag(config=True)
    stream_interval = Float(
        0.1, help="Seconds between streamed display updates (0: at every token)."
    ).tag(config=True)
    decode = Unicode(
        "auto",
        help="auto (fast on CUDA, eager on CPU), fast (static cache + compiled decode step), "
        "or eager (transformers generate); $QWEN3_JUPYTER_DECODE wins when set.",
    ).tag(config=True)
    server = Unicode(
        "",
        help="OpenAI-compatible server URL used when --server is not given "
        "($QWEN3_JUPYTER_SERVER wins when set).",
    ).tag(config=True)

    @validate("stream_interval")
    def _seconds(self, proposal: Any) -> float:
        """-1 updated at every token and NaN or inf never, without a word."""
        seconds = float(proposal["value"])
        if not math.isfinite(seconds) or seconds < 0:
            raise TraitError(
                f"Qwen3Magics.stream_interval must be a number of seconds, 0 or more (0 updates "
                f"at every token), not {proposal['value']!r}"
            )
        return seconds

    @plain_usage
    @magic_arguments()
    @argument(
        "--model",
        metavar="ID_OR_PATH",
        help="Hugging Face id, local folder, or an embedded model: tiny, random:Qwen3-1.7B. "
        "Default: the loaded model (a changed $QWEN3_JUPYTER_MODEL or %%config "
        "Qwen3Magics.model switches it), else what those name, else Qwen/Qwen3-1.7B.",
    )
    @argument(
        "--server",
        metavar="URL",
        help="Ask an OpenAI-compatible server (vLLM, SGLang, transformers serve) instead of a "
        "model in this kernel, e.g. http://localhost:8000/v1; --model then names the served "
        "model (default: the server's first). API key: $QWEN3_JUPYTER_API_KEY or "
        '$OPENAI_API_KEY. --server "" uses the model in this kernel, whatever server '
        "$QWEN3_JUPYTER_SERVER or %%config Qwen3Magics.server name.",
    )
    @argument(
        "--device",
        help="cpu, cuda or cuda:N. Default: $QWEN3_JUPYTER_DEVICE, else %%config "
        "Qwen3Magics.device, else the loaded model's, else cuda if present, else cpu.",
    )
    @argument(
        "--dtype",
        type=canonical_dtype,
        choices=DTYPES,
        help="Default: $QWEN3_JUPYTER_DTYPE, else %%config Qwen3Magics.dtype, else the "
        "loaded model's (on its device), else bfloat16 on CUDA (float16 before Ampere: T4, "
        "V100), float32 on CPU (bf16, fp16, fp32 also accepted).",
    )
    @argument(
        "--think",
        dest="think",
        action=OneWaySwitch,
        const=True,
        default=None,
        help="Thinking mode (Qwen3's enable_thinking=True). The default.",
    )
    @argument(
        "--no-think",
        dest="think",
        action=OneWaySwitch,
        const=False,
        help="Non-thinking mode (enable_thinking=False).",
    )
    @argument(
        "--fast",
        action="store_true",
        help="Decode through a static KV cache and a compiled decode step (a CUDA graph on "
        "GPUs) — the default on CUDA ($QWEN3_JUPYTER_DECODE or %%config Qwen3Magics.decode "
        "change the default). The cache is kept between calls for speed.",
    )
    @argument(
        "--eager",
        action="store_true",
        help="Decode with transformers' own generate (dynamic cache), and give back all the "
        "memory the fast path keeps. Alone: just give it back.",
    )
    @argument(
        "--warmup",
        action="store_true",
        help="Compile (and capture) the fast decode step now, so the first question does not "
        "wait for it; with or without a prompt. With --batch-size N, the batch-N step too "
        "(its cache is given back at once; the compiled step stays for generate_batch). On CPU, "
        "where plain calls decode eagerly, it serves --fast calls (the warmup line says so).",
    )
    @argument("--hide-thinking", action="store_true", help="Do not show the thinking text.")
    @argument(
        "--gauge",
        action="store_true",
        help="Show a compact live memory gauge while generating (left as a static copy).",
    )
    @argument("--temperature", type=float, help="Default 0.6 thinking / 0.7 non-thinking.")
    @argument("--top-p", type=float, help="Default 0.95 thinking / 0.8 non-thinking.")
    @argument("--top-k", type=int, help="Default 20.")
    @argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"Token budget for the answer (default {DEFAULT_MAX_NEW_TOKENS}).",
    )
    @argument("--seed", type=int, help="Seed for reproducible sampling.")
    @argument("--greedy", action="store_true", help="Greedy decoding (no sampling).")
    @argument(
        "--ignore-eos",
        action="store_true",
        help="Always generate exactly --max-new-tokens tokens (for benchmarks).",
    )
    @argument("--system", metavar="TEXT", help="System prompt (quote it if it has spaces).")
    @argument(
        "--vars",
        action="store_true",
        help="Fill {expression} in the prompt and --system from this notebook, as in an "
        "f-string: {name}, {df.head()}, {x:.2f}; {{ and }} are literal braces. Without it the "
        "prompt is sent exactly as typed ($ and braces included).",
    )
    @argument(
        "--chat",
        action="store_true",
        help="Continue this kernel's conversation (default: independent call).",
    )
    @argument(
        "--reset",
        action="store_true",
        help="Clear the conversation (from Python: qwen3_jupyter.reset_chat()).",
    )
    @argument(
        "--file",
        metavar="PROMPTS",
        help="Batch mode: a text file, one prompt per line (blank lines skipped); a .csv/.tsv "
        "file's 'prompt' column (first row: the names); a .jsonl file, one JSON string or "
        "object per line (its 'prompt' field), or a .json array of them.",
    )
    @argument(
        "--field",
        metavar="NAME",
        help="With a .csv/.tsv/.jsonl/.json --file: the column or field holding the prompts "
        "(default 'prompt', what --out writes).",
    )
    @argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"Prompts per batch with --file (default {DEFAULT_BATCH_SIZE}); halved on "
        "out-of-memory. With --warmup: also build the step for batches of this size.",
    )
    @argument(
        "--concurrency",
        type=int,
        default=None,
        help="With --file and --server: requests in flight at once (default 4).",
    )
    @argument(
        "--out",
        metavar="RESULTS.jsonl",
        help="With --file: append one JSON line per prompt as each batch finishes.",
    )
    @argument(
        "--memory-budget",
        metavar="SIZE",
        help="Cap on the tensors generation may hold, e.g. 2GiB (default "
        "$QWEN3_JUPYTER_MEMORY_BUDGET). Exceeding it is an out-of-memory error: a call stops "
        "with a one-line message, --file halves its batch size and retries.",
    )
    @argument(
        "--unload",
        action="store_true",
        help="Free the loaded model completely and report the memory returned.",
    )
    @argument(
        "--stop",
        action="store_true",
        help="Ask the call using the model in another thread (a generate_batch started in a "
        "thread, say), and any --server call running in another thread, to stop at its next "
        "step; each keeps what it finished.",
    )
    @line_cell_magic
    @no_var_expand
    @needs_local_scope
    def qwen3(
        self, line: str = "", cell: str | None = None, local_ns: dict[str, Any] | None = None
    ) -> None:
        """Ask Qwen3, running inside this kernel; the answer streams into the cell.

        Usage:

          %qwen3 [options] PROMPT
          %%qwen3 [options]
          PROMPT (the whole cell)

        Options come before the prompt: `%qwen3 --no-think Why?`, not `%qwen3 Why?
        --no-think` (refused: put `--` first to send option-like words as text).
        `%qwen3 --help` shows this page.

        The last call's result is bound to `_qwen3` (answer, thinking, token counts,
        latency, tokens/s, peak memory); the magic returns nothing, so nothing lands in Out.
        After every call the memory generation used is released and a footer says how much.

        Examples:

          %qwen3 --model tiny Why is the sky blue?
          %qwen3 --no-think --max-new-tokens 64 Summarise this in one line: ...
          %qwen3 --chat And in French?
          %qwen3 --vars Summarise this review: {reviews[0]}
          %qwen3 --file prompts.txt --batch-size 4 --out results.jsonl
          %qwen3 --file reviews.csv --field text --no-think
          %qwen3 --warmup --batch-size 16
          %qwen3 --eager
          %qwen3 --server http://localhost:8000/v1 Why is the sky blue?
          %qwen3 --unload

        With --file, `_qwen3` is the list of results (in input order) and its `.report`
        says which batch size held after any out-of-memory back-off.

        On CUDA, answers decode through the fast path: a static KV cache and a compiled decode
        step replayed as a CUDA graph. Its first use in a kernel compiles (it says so, and how
        long; compiled kernels are cached on disk for the next kernel; `--warmup` compiles
        ahead). The cache is kept between calls for speed and named in the footer, the gauge
        and `%qwen3_clean --verbose`; `--eager` decodes with transformers' own generate and
        gives all of it back. `--server URL` asks an OpenAI-compatible server instead.
        """
        if asks_help(line, options_of(self.qwen3)):  # -h, --help: `%qwen3?`
            self._help()
            return
        if cell is None and line.strip() in ("?", "??"):  # `%qwen3 ?`: help, not an answer
            self._help()  # (`%qwen3 -- ?` and `%qwen3 --no-think ?` ask the model)
            return
        namespace = self._namespace(local_ns)
        options, prompt = parse_line(self.qwen3, line, cell, expander(namespace))
        try:
            if options.vars:
                prompt = _fill_text(options, prompt, namespace)
            self._run(options, prompt)
        except (
            ModelError,
            ModelBusy,
            GenerationOOM,
            EngineError,
            ResultsFileError,
            PromptVarsError,
        ) as exc:
            message = str(exc)
            partial = getattr(exc, "result", None)  # a stream that failed after some text
            if isinstance(partial, Result) and self.shell is not None:
                self.shell.user_ns["_qwen3"] = partial
                message += f" (the {partial.completion_tokens} tokens that came: _qwen3)"
        except KeyboardInterrupt:
            # Landed between the steps that report an interrupt themselves (setting up the
            # display, the prompt, the tokenizer): one line, not the 40-200 frames under it.
            CELL_INTERRUPTS.note(True)
            served = server_url(options.server, self.server or None) is not None
            kept = "are kept" if served else "and the loaded model are kept"
            message = (
                "interrupted before the call could finish or say what it kept: your variables "
                f"{kept}; run the cell again"
            )
        else:
            return
        raise UsageError(message)

    def _namespace(self, local_ns: dict[str, Any] | None) -> dict[str, Any]:
        """The names a `{...}` or `$name` may use: the notebook's, then the caller's locals
        (a `%qwen3` line inside a function sees that function's variables)."""
        namespace = dict(self.shell.user_ns) if self.shell is not None else {}
        namespace.update(local_ns or {})
        return namespace

    def _help(self) -> None:
        """What `%qwen3?` shows: IPython's page for the magic (its options and docstring)."""
        show_help(self.shell, "qwen3", self.qwen3)

    def _run(self, args: Namespace, prompt: str) -> None:
        batch = _validate(args, prompt)
        if args.stop:
            display.info(stop())
            return
        if prompt or args.file:
            try:
                CELL_INTERRUPTS.check()
            except KeyboardInterrupt:
                raise UsageError(
                    "not started: a call earlier in this cell was interrupted, and one interrupt "
                    "stops the cell's calls (run the cell again)"
                ) from None
        local = args.unload or server_url(args.server, self.server or None) is None
        uses_model = bool(prompt or args.file or args.warmup or args.unload or args.eager)
        # Held before the call touches anything another thread's call uses (engine, notices).
        with holding(local and uses_model, "a %qwen3 cell"):
            self._run_holding(args, prompt, batch)

    def _run_holding(self, args: Namespace, prompt: str, batch: list[str] | None) -> None:
        for line in magic_config.take_unsaid(self):  # the config's refusals of the kernel's start
            display.info(line)
        if args.reset:
            display.info(reset_chat())
        if args.unload:
            _show_unload(unload_whole())
        if args.eager and not prompt and not args.file:
            _show_fast_closed(SESSION, self.decode)
        if not prompt and not args.file and not args.warmup:
            return
        status = display.Status()
        engine: Engine | None = None
        failed = True
        closing: list[str] = []  # what the call's line ends with (a warmup alone: its summary)
        with display.call_line(status):  # a batch's progress shows in this call's line
            try:
                engine = self._engine(args, status)
                engine.status = status.show  # the engine's own progress line for this call
                if args.warmup:
                    summary = _warmup(engine, args.batch_size, args.max_new_tokens)
                    # What each shape did, then the sum: in the line's display when alone.
                    caveat = _warmup_caveat(engine, self.decode or None)
                    said = [*SESSION.take_notices(), summary + caveat]
                    if not prompt and not args.file:
                        closing, failed = said, False
                        return
                    for line in said:
                        display.info(line)
                status.clear()
                options = _options(args)
                if args.file:
                    self._run_batch(args, batch or [], engine, options, status)
                else:
                    self._ask(args, engine, prompt, options, status)
                failed = False
            finally:
                if engine is not None:
                    engine.status = None
                status.end([*closing, *SESSION.take_notices()], failed)

    def _engine(self, args: Namespace, status: display.Status) -> Engine:
        """The engine this call uses, loading the model (with progress) when it must."""
        url = server_url(args.server, self.server or None)
        if url is not None:
            check_server(args.server, self.server or None)
            typed = [
                f"--{name}"
                for name in ("device", "dtype", "eager", "fast", "warmup")
                if getattr(args, name)
            ]
            if typed:
                verb = "apply" if len(typed) > 1 else "applies"
                raise UsageError(
                    f"{' and '.join(typed)} {verb} to a model in this kernel, not with "
                    f"{server_source(args.server)}"
                )
            status.show(f"connecting to {mask_url(url)}…")
            return SESSION.remote_engine(url, args.model)
        flag = "eager" if args.eager else "fast" if args.fast or args.warmup else None
        check_decode(flag, self.decode)  # a bad %config value: refused before any load
        if "torch" not in sys.modules:
            status.show("importing torch and transformers…")
        try:
            choice = SESSION.choice(
                args.model,
                args.device,
                args.dtype,
                configured_model=self.model,
                configured_device=self.device,
                configured_dtype=self.dtype,
            )
        except KeyboardInterrupt:  # held until torch was whole (import_whole): it still works
            raise UsageError(
                "interrupted while importing torch and the model's code (it was let finish, so "
                "this kernel can still use it); run the cell again"
            ) from None
        loaded = SESSION.loaded
        if loaded is None or not is_loaded_as(loaded, choice):
            status.show(f"loading {choice.name} on {choice.device} ({choice.dtype})…")
        try:
            loaded = SESSION.load(choice, progress=status.progress)
        except KeyboardInterrupt:
            kept = SESSION.loaded
            state = f"{kept.name} is still loaded" if kept else "no model is loaded now"
            raise UsageError(
                f"interrupted while loading {choice.name}: {state}; run the cell again to load it"
            ) from None
        mode = decode_mode(flag, self.decode, loaded.device)
        return SESSION.local_engine(loaded, mode, _rebuilds(self.decode, loaded.device))

    def _ask(
        self,
        args: Namespace,
        engine: Engine,
        prompt: str,
        options: GenerationOptions,
        status: display.Status,
    ) -> None:
        options = SESSION.follow_template(engine, options, tell=display.info)  # before the answer
        # Before the gauge: the answer comes above it whether or not a status line (loading)
        # made the view's display earlier.
        view = display.StreamView(options.think, args.hide_thinking, status)
        with inline_gauge() if args.gauge else nullcontext():
            try:
                result = SESSION.ask(
                    engine,
                    prompt,
                    options,
                    chat=args.chat,
                    on_text=view.update,
                    memory_budget=_budget(args),
                    stream_interval=self.stream_interval,
                    footer_follows=True,
                )
            except BaseException:
                view.clear()
                raise
            finally:
                status.clear()
        view.finish(result)
        if self.shell is not None:
            self.shell.user_ns["_qwen3"] = result
        for notice in SESSION.take_notices():  # what the load and the turn said, then the footer
            display.info(notice)
        display.show_footer(result)

    def _run_batch(
        self,
        args: Namespace,
        prompts: list[str],
        engine: Engine,
        options: GenerationOptions,
        status: display.Status,
    ) -> None:
        ignored = _ignored_by(engine, args)
        if ignored:
            display.info(ignored)
        options = SESSION.follow_template(engine, options, tell=display.info)
        try:
            with inline_gauge() if args.gauge else nullcontext():  # it was silently ignored
                results = engine.generate_batch(
                    prompts,
                    options,
                    batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
                    concurrency=args.concurrency,
                    memory_budget=_budget(args),
                    out=args.out,
                    progress=True,
                )
        except GenerationOOM as exc:
            if exc.results is None or self.shell is None:
                raise
            self.shell.user_ns["_qwen3"] = exc.results  # what finished is not lost
            kept = str(exc).replace("kept in .results", "kept in _qwen3")
            raise GenerationOOM(kept, exc.hint) from None
        except ResultsFileError as exc:  # the file failed midway: what finished is not lost
            if exc.results is None or self.shell is None:
                raise
            self.shell.user_ns["_qwen3"] = exc.results
            raise ResultsFileError(str(exc).replace("kept in .results", "kept in _qwen3")) from None
        except EngineError as exc:
            located = _located(exc, prompts)
            if located is None:
                raise
            raise EngineError(located) from None
        finally:
            status.clear()
        CELL_INTERRUPTS.note(results.report.interrupted)
        if self.shell is not None:  # first: an interrupt while the table shows keeps them
            self.shell.user_ns["_qwen3"] = results
        for notice in SESSION.take_notices():  # the load's line before the batch's summary
            display.info(notice)
        display.show_batch(results, results.report, status)


def _located(exc: EngineError, prompts: list[str]) -> str | None:
    """`exc`'s message naming the file and line of the prompt it is about (`--file p.txt,
    line 5: the prompt (6,398 tokens) + …`) where it names one by its position among the
    prompts (`prompt 2 (6,398 tokens) + …`), which a user reading the file cannot count."""
    index, message = exc.prompt_index, str(exc)
    lead = f"prompt {index} "
    if index is None or not isinstance(prompts, FilePrompts) or not message.startswith(lead):
        return None
    return f"{prompts.located(index)}: the prompt {message[len(lead) :]}"


def _ignored_by(engine: Engine, args: Namespace) -> str | None:
    """A notice for batch options the engine has no use for: a notebook pointed at a local
    model or at a server by configuration keeps working either way, and is told."""
    if engine.kind != "remote":
        if args.concurrency is None:
            return None
        return (
            "--concurrency applies to a --server: ignored for a model in this kernel, which "
            f"batches {args.batch_size or DEFAULT_BATCH_SIZE} prompts at a time (--batch-size)"
        )
    from .engines.remote import DEFAULT_CONCURRENCY

    flags = {"--batch-size": args.batch_size, "--memory-budget": args.memory_budget}
    unused = [flag for flag, value in flags.items() if value is not None]
    if not unused:
        return None
    verb = "apply" if len(unused) > 1 else "applies"
    return (
        f"{' and '.join(unused)} {verb} to a model in this kernel: ignored for a server, which "
        f"gets {args.concurrency or DEFAULT_CONCURRENCY} requests at once (--concurrency)"
    )


def _options(args: Namespace) -> GenerationOptions:
    return GenerationOptions(
        think=True if args.think is None else args.think,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        system=args.system,
        greedy=args.greedy,
        ignore_eos=args.ignore_eos,
    )


def _warmup(engine: Engine, batch_size: int | None, max_new_tokens: int) -> str:
    """Compile the fast path's decode step now (for batches of `batch_size` too, sized for
    answers of `max_new_tokens`), so the first question does not wait."""
    warmup = getattr(engine, "warmup", None)
    if warmup is None:
        return f"--warmup: nothing to compile for the {engine.kind} engine"
    sizes = (1,) if batch_size is None or batch_size == 1 else (1, batch_size)
    try:
        return str(warmup(sizes, max_new_tokens=max_new_tokens))
    except KeyboardInterrupt:  # one line, not torch.compile's 50 frames
        raise UsageError(
            "--warmup interrupted: the model, your variables and the shapes already built are "
            "kept; run it again to finish (or just ask: the first call builds what it needs)"
        ) from None


def _warmup_caveat(engine: Engine, configured: str | None) -> str:
    """Where plain calls decode eagerly (the CPU's default), the next one gives the warmed-up
    path back: say so with the warmup, rather than let it look wasted later."""
    device = str(getattr(engine, "device", ""))
    if not hasattr(engine, "warmup") or decode_mode(None, configured, device) == "fast":
        return ""
    return (
        f" · on {device} plain calls decode eagerly and give this back: it serves --fast calls "
        "(or %config Qwen3Magics.decode = 'fast')"
    )


def _show_unload(report: Any) -> None:
    display.info(report.summary)


def _show_fast_closed(session: Any, configured_decode: str | None) -> None:
    """`%qwen3 --eager` alone: give back what the fast path kept, and say how much."""
    loaded = session.loaded
    rebuilds = _rebuilds(configured_decode, loaded.device) if loaded else "the next --fast call"
    notice = session.give_back_fast(rebuilds)
    display.info(notice or "fast decode holds nothing now: nothing to give back")


def _rebuilds(configured_decode: str | None, device: str) -> str:
    """The call that builds the fast path again once `--eager` gave it back: any call where
    calls decode fast unless told (CUDA by default), else only a `--fast` one (the CPU's
    default is eager: "the next call without --eager" was not true there)."""
    try:
        fast_by_default = decode_mode(None, configured_decode, device) == "fast"
    except EngineError:  # a bad setting is refused by the call that reads it, not here
        fast_by_default = False
    return "the next call without --eager" if fast_by_default else "the next --fast call"


def _options_given(args: Namespace, exclude: tuple[str, ...] = ()) -> list[str]:
    """The options set to other than their defaults (from the magic's own parser)."""
    defaults = vars(parse_argstring(Qwen3Magics.qwen3, ""))
    return [
        name
        for name, value in vars(args).items()
        if name not in exclude and name in defaults and value != defaults[name]
    ]


def _same_file(out: str, prompts: str) -> bool:
    """Whether the two paths name one file (a link, `./`, `~` included)."""
    first, second = Path(out).expanduser(), Path(prompts).expanduser()
    try:
        return first.samefile(second)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def _validate(args: Namespace, prompt: str) -> list[str] | None:
    """Refuse bad flags in one line before any work; the --file prompts, read once, if any."""
    if args.stop and (prompt or _options_given(args, exclude=("stop",))):
        raise UsageError(
            "--stop goes alone: it asks the call using the model in another thread to stop"
        )
    if args.unload and (prompt or args.file or args.warmup):
        raise UsageError(
            "--unload goes alone: it frees the model, which asking would load again at once "
            "(ask in the next cell)"
        )
    if args.file and prompt:
        raise UsageError("give either a prompt or --file PROMPTS.txt, not both")
    if args.file and args.chat:
        raise UsageError(
            "--chat continues one conversation; the prompts of --file are each asked alone"
        )
    if args.out and not args.file:
        raise UsageError("--out goes with --file PROMPTS.txt")
    if args.hide_thinking and args.file:
        raise UsageError(
            "--hide-thinking goes with one prompt: a --file batch's table shows the answers only"
        )
    if args.out and _same_file(args.out, args.file):
        raise UsageError(
            f"--out {args.out} is the --file being read (results are appended to --out): "
            "name another file"
        )
    if args.out:
        try:
            check_results_file(args.out)  # before the load, not after it
        except ResultsFileError as exc:
            raise UsageError(str(exc)) from None
    if args.field and not args.file:
        raise UsageError("--field goes with --file PROMPTS.csv (or .tsv, .jsonl, .json)")
    if prompt and not prompt.strip():  # --vars filled it with blanks: nothing to ask
        raise UsageError("empty prompt: --vars filled it with nothing but blanks")
    if (
        not prompt
        and not args.file
        and not (args.reset or args.unload or args.eager or args.warmup or args.stop)
    ):
        raise UsageError("empty prompt: write %qwen3 [options] PROMPT (see %qwen3?)")
    _refuse_options_alone(args, prompt)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be >= 1")
    if args.batch_size is not None and not (args.file or args.warmup):
        raise UsageError("--batch-size goes with --file PROMPTS.txt or --warmup")
    if args.concurrency is not None and not args.file:
        raise UsageError("--concurrency goes with --file PROMPTS.txt and --server URL")
    sampling = [
        f"--{n.replace('_', '-')}"
        for n in ("temperature", "top_p", "top_k")
        if getattr(args, n) is not None
    ]
    if args.greedy and sampling:
        raise UsageError(
            f"--greedy always takes the likeliest token, so {' and '.join(sampling)} would do "
            "nothing: drop one of them"
        )
    if args.greedy and args.seed is not None:
        raise UsageError(
            "--greedy draws no random numbers, so --seed would do nothing: drop one of them"
        )
    if args.eager and args.fast:
        raise UsageError("--eager and --fast exclude each other")
    if args.eager and args.warmup:
        raise UsageError("--warmup builds the fast path, which --eager gives back: use one")
    if args.memory_budget:
        try:
            parse_size(args.memory_budget)
        except ValueError as exc:
            raise UsageError(f"--memory-budget: {exc}") from None
    else:
        try:
            memory_budget_bytes(None)  # $QWEN3_JUPYTER_MEMORY_BUDGET, which the flag overrides
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        batch = read_prompts(args.file, args.field) if args.file else None
    except PromptFileError as exc:
        raise UsageError(str(exc)) from None
    for name, _value, rule in broken_rules(vars(args)):
        extra = " (use --greedy for deterministic output)" if name == "temperature" else ""
        raise UsageError(f"--{name.replace('_', '-')} {rule}{extra}")
    return batch


_ALONE = {
    "reset": (
        "--reset alone clears the conversation",
        "to start a new conversation at once: %qwen3 --reset --chat [options] PROMPT",
    ),
    "unload": ("--unload alone frees the model", "unload, then ask in the next cell"),
    "eager": (
        "--eager alone gives back what the fast path keeps",
        "to decode eagerly: %qwen3 --eager [options] PROMPT",
    ),
}
"""The actions `%qwen3` takes without a prompt (with --warmup and --stop, which have rules of
their own): what each does, and the line that means what other options would ask."""


def _refuse_options_alone(args: Namespace, prompt: str) -> None:
    """`%qwen3 --reset --system "You are a pirate" --no-think` printed "conversation cleared"
    and dropped every other option without a word: without a prompt they have nothing to
    apply to. Refuse them in one line (the actions themselves may go together)."""
    if prompt or args.file or args.warmup or args.stop:
        return
    actions = [name for name in _ALONE if getattr(args, name)]
    extra = _options_given(args, exclude=tuple(_ALONE))
    if not actions or not extra:
        return
    flags = [_flag_name(name, getattr(args, name)) for name in extra]
    listed = ", ".join(flags[:-1]) + (" and " if len(flags) > 1 else "") + flags[-1]
    does, instead = _ALONE[actions[0]]
    raise UsageError(f"{does}: {listed} would do nothing without a prompt ({instead})")


def _flag_name(dest: str, value: Any) -> str:
    """The flag that set `dest` (`think` False: --no-think)."""
    if dest == "think" and value is False:
        return "--no-think"
    return f"--{dest.replace('_', '-')}"


def _budget(args: Namespace) -> int | None:
    """The memory budget from --memory-budget, else $QWEN3_JUPYTER_MEMORY_BUDGET, else none."""
    return parse_size(args.memory_budget) if args.memory_budget else memory_budget_bytes(None)


def _fill_text(args: Namespace, prompt: str, namespace: dict[str, Any]) -> str:
    """--vars: the prompt and --system with their `{expression}`s filled."""
    if args.file:
        raise UsageError(
            "--vars fills a prompt typed in the cell; --file prompts are sent as written "
            "(build them in Python and call qwen3_jupyter.generate_batch)"
        )
    if args.system:
        try:
            args.system = fill(args.system, namespace)
        except PromptVarsError as exc:
            raise PromptVarsError(str(exc).replace("--vars:", "--vars, in --system:", 1)) from None
    return fill(prompt, namespace)


def load(ip: Any) -> None:
    """Register the magics on the shell, configured from the shell's config (a value an option
    refuses is set aside and said: see magic_config)."""
    magics, refused = configured_magics(Qwen3Magics, ip)
    ip.register_magics(magics)
    magic_config.say_or_hold(refused)
    ip.input_transformers_cleanup.append(protect_prompt_lines)
    ip.events.register("post_run_cell", _release_leftover_hold)
    lifecycle.on_unload("qwen3-magics", lambda: unload(ip))
    lifecycle.on_unload("qwen3-engines", _close_engines)


def _release_leftover_hold(result: Any = None) -> None:
    """At a cell's end, give back a hold no running code uses any more (see
    ModelUse.release_leftover)."""
    from .models import HOLDER

    HOLDER.use.release_leftover()


def _close_engines() -> None:
    """On `%unload_ext`: the fast path's cache and the servers' connections go too."""
    fast = SESSION.engines.get("fast")
    held = fast is not None and bool(fast.kept_memory())
    closed = SESSION.close_engines()  # told after: a busy engine is kept, not given back
    if held and "fast" in closed:
        lifecycle.tell("the fast path's decode cache given back (the next call builds it again)")
    elif held:
        lifecycle.tell("the fast path's decode cache kept: a call in another thread decodes on it")


def unload(ip: Any) -> None:
    """Remove what `load` registered."""
    magic_config.forget()
    lifecycle.remove_magics(ip, "Qwen3Magics", line=("qwen3",), cell=("qwen3",))
    if protect_prompt_lines in ip.input_transformers_cleanup:
        ip.input_transformers_cleanup.remove(protect_prompt_lines)
    if _release_leftover_hold in ip.events.callbacks["post_run_cell"]:
        ip.events.unregister("post_run_cell", _release_leftover_hold)
