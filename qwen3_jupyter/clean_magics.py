"""`%%qwen3_clean` / `%qwen3_clean` and `%qwen3_autoclean`: cleanup as magics (thin glue).

The cell form runs its body the way IPython runs a cell (input transforms, AST transformers,
`ast_node_interactivity`, a trailing `;`), so the result displays as the cell's `Out[N]` and an
exception shows its ordinary traceback and marks the cell as failed; then it cleans.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
import types
import weakref
from argparse import Namespace
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from . import display, lifecycle
from .cleanup import CleanupReport, cleanup, shutdown_nvml
from .holders import definition_holders
from .interrupts import CELL_INTERRUPTS
from .magic_args import asks_help, did_you_mean, parse_options, plain_usage, show_help
from .memory import format_bytes
from .out_of_memory import out_of_memory_reason
from .release_actions import release_last_exception

_log = logging.getLogger(__name__)

_DEFINITIONS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
_IPYTHON_OWN = ("_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh", "In", "Out")
_OWN = ("_qwen3",)
"""The package's own names: `%qwen3`'s last result (plain values: dropping it frees nothing and
loses the answer)."""


@magics_class
class CleanMagics(Magics):
    """Free the memory that notebooks keep referenced: output cache, last traceback, cycles."""

    def __init__(self, shell: Any, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        self.ip: Any = shell
        self.autoclean = False
        self._cleaned_cell: Any = None
        self._error_kept = False
        """Autoclean left a failed cell's exception for %debug: the next cell's start frees it."""

    @plain_usage
    @magic_arguments()
    @argument(
        "--drop",
        action="store_true",
        help=(
            "Delete the variables this cell created (never ones that existed before it, nor "
            "what its import, def and class statements bound, nor %%qwen3's _qwen3)."
        ),
    )
    @argument(
        "--keep",
        metavar="NAMES",
        default="",
        help=(
            "Comma-separated names that --drop keeps, e.g. --keep model,tok (a name the cell "
            "left no variable for drops nothing: a typo must not cost the one meant)."
        ),
    )
    @argument("--dynamo", action="store_true", help="Also reset torch.compile (dynamo) state.")
    @argument(
        "--full",
        action="store_true",
        help="Scan every object for cycles, not only those created since the last cleanup.",
    )
    @argument("--quiet", "-q", action="store_true", help="Print no report.")
    @argument(
        "--verbose",
        "-v",
        action="store_true",
        help="Also list what still holds memory (variables, outputs, model) and how to free it.",
    )
    @line_cell_magic
    def qwen3_clean(self, line: str = "", cell: str | None = None) -> None:
        """Free memory that is only referenced by the notebook's machinery, and report it.

        Usage:

          %qwen3_clean [--full] [--dynamo] [--quiet] [--verbose]
          %%qwen3_clean [--drop] [--keep NAMES] [--full] [--dynamo] [--quiet] [--verbose]
          BODY (runs like a normal cell, then cleans)

        Releases: output-cache entries (Out, _, __, ___, _N) that hold tensors or models,
        including this cell's own result once it has been shown; the last exception's
        traceback (its frames keep tensors alive; %debug has nothing to inspect afterwards);
        caches generation left on the model; reference cycles; torch's CUDA cache on every
        device (peak counters reset). Never deletes a variable unless --drop is given, and
        then only those the cell created; never unloads the model (use %qwen3 --unload).
        Prints one line: memory before -> after, what was released, and how the gc went.

        The cycle search scans only objects created since the last cleanup (what survived it
        is frozen), so it takes milliseconds, not the ~0.2 s per million objects of a full
        one. It scans everything on the first cleanup, after a variable that existed at the
        last cleanup was deleted or rebound while its old value lives on, when a quarter of
        the heap is new, with --verbose or --dynamo, and with --full. A cycle among older
        objects that became garbage some other way (e.g. a list of them was cleared) waits
        for the next full one: use --full. gc.collect() and gc.get_objects() still see every
        object. QWEN3_JUPYTER_INCREMENTAL_GC=0 makes every cleanup full.
        The body runs like a cell (its result shows as Out[N], an error fails the cell),
        except that top-level `await` is not supported in it.

        Examples:

          %qwen3_clean --verbose

          %%qwen3_clean --drop --keep result
          logits = model(**batch).logits
          result = logits.argmax(-1).tolist()
        """
        if asks_help(line):  # the page `%qwen3_clean?` shows; the cell does not run
            show_help(self.shell, "qwen3_clean", self.qwen3_clean)
            return None
        args = parse_options(self.qwen3_clean, line, "%qwen3_clean?")
        if args.quiet and args.verbose:  # quiet won silently: the report asked for never came
            raise UsageError("--quiet prints no report and --verbose a longer one: use one")
        keep = _parse_keep(args.keep)
        if cell is None:
            if args.drop or keep:
                raise UsageError(
                    "--drop and --keep apply to a %%qwen3_clean cell (the names it creates)"
                )
            self._clean(args, ())
            return
        if keep and not args.drop:
            raise UsageError("--keep names what --drop spares: add --drop")
        before = set(self.ip.user_ns)
        tree: ast.Module | None = None
        try:
            tree = run_cell_body(self.ip, cell)
        finally:
            # A --keep name the cell left no variable for is a typo: drop nothing then.
            missing = [name for name in keep if name not in self.ip.user_ns]
            drops = args.drop and not missing
            defined = definition_names(tree) if drops else frozenset()
            created = created_names(self.ip, before, keep, defined) if drops else ()
            kept = kept_definitions(self.ip, before, defined) if drops else ()
            self._clean(args, created, kept)
            current = getattr(self.ip.displayhook, "exec_result", None)
            self._cleaned_cell = weakref.ref(current) if current is not None else None
        failed = current is not None and current.error_in_exec is not None
        if missing and not failed:  # after a failed body, its traceback says why it is missing
            made = [name for name in self.ip.user_ns if name not in before]
            raise UsageError(
                f"--keep {missing[0]}: the cell left no variable of that name"
                f"{did_you_mean(missing[0], made)}; nothing was dropped"
            )

    @plain_usage
    @magic_arguments()
    @argument(
        "mode",
        nargs="?",
        default="status",
        choices=("on", "off", "status"),
        help="on: clean after every cell; off: stop; status (default): say which.",
    )
    @line_magic
    def qwen3_autoclean(self, line: str = "") -> None:
        """Clean after every cell (like %qwen3_clean), reporting only when memory was freed.

        Usage:

          %qwen3_autoclean on|off|status

        With it on, a tensor shown as a cell's result is not kept in Out/_. A failed cell's
        traceback is kept for the cells that debug it (%debug, %tb, pdb.pm()) and released as
        any other cell starts; one that ran out of memory is released at once.
        Unloading the extension turns it off.
        """
        if asks_help(line):
            show_help(self.shell, "qwen3_autoclean", self.qwen3_autoclean)
            return
        args = parse_options(self.qwen3_autoclean, line, "%qwen3_autoclean?")
        if args.mode == "on":
            self.set_autoclean(True)
        elif args.mode == "off":
            self.set_autoclean(False)
        state = "on: cleaning after every cell" if self.autoclean else "off"
        display.info(f"autoclean {state}")

    def set_autoclean(self, on: bool) -> None:
        """Register or remove the post_run_cell hook (idempotent)."""
        if on and not self.autoclean:
            self.ip.events.register("post_run_cell", self._after_cell)
        elif not on and self.autoclean:
            self.ip.events.unregister("post_run_cell", self._after_cell)
            self._keep_error(False)
        self.autoclean = on

    def _after_cell(self, result: Any = None) -> None:
        cleaned, self._cleaned_cell = self._cleaned_cell, None
        if result is not None and cleaned is not None and cleaned() is result:
            return  # a %%qwen3_clean cell has just cleaned
        debugged = self._error_kept and _debugs(result)
        keep = _debuggable_error(result) or debugged
        report = cleanup(shell=self.ip, caller="magic", keep_last_error=keep)
        self._keep_error(keep)
        if report.freed_bytes > 0 or report.error:
            display.info(report.summary())

    def _keep_error(self, keep: bool) -> None:
        """Watch for the next cell's start while a failed cell's exception is kept."""
        if keep and not self._error_kept:
            self.ip.events.register("pre_run_cell", self._before_cell)
        elif not keep and self._error_kept:
            self.ip.events.unregister("pre_run_cell", self._before_cell)
        self._error_kept = keep

    def _before_cell(self, info: Any = None) -> None:
        """Free the kept exception as a cell starts, unless that cell debugs it: %debug and
        %tb had nothing to show after a failed cell under autoclean, which had already
        released its traceback (and, for a small one, said nothing)."""
        if DEBUGS_THE_LAST_ERROR.search(getattr(info, "raw_cell", None) or ""):
            return
        self._keep_error(False)
        try:
            release_last_exception(self.ip)
        except Exception:  # never into the user's cell
            _log.exception("qwen3_jupyter: releasing the last exception failed")

    def _clean(
        self, args: Namespace, drop: tuple[str, ...], kept: tuple[str, ...] = ()
    ) -> CleanupReport:
        try:
            report = cleanup(
                shell=self.ip,
                drop=drop,
                dynamo=args.dynamo,
                verbose=args.verbose,
                full=args.full,
                caller="magic",
            )
        except KeyboardInterrupt:
            CELL_INTERRUPTS.note(True)
            raise UsageError(
                "cleanup interrupted: what it freed stays freed and nothing else was touched; "
                "%qwen3_clean again finishes it and reports"
            ) from None
        if not args.quiet:
            display.info(report.summary())
            for line in (*report.details(), *kept):
                print(f"  {line}", flush=True)
        return report


DEBUGS_THE_LAST_ERROR = re.compile(
    r"^\s*%{1,2}(?:debug|tb|pdb)\b|^\s*(?:debug|tb)\s*$|\bpdb\.pm\(|post_mortem\(|\bsys\.last_"
    r"|last_execution_result",
    re.MULTILINE,
)
"""A cell that reads the last error: `%debug`, `%tb`, `%pdb` (or `debug` or `tb` alone on a line,
with automagic), `pdb.pm()`, `post_mortem(...)`, `sys.last_*`, IPython's last execution result.
Not `tb = None` or `debug = False`: such a cell kept a failed cell's tensors through a retry."""


def _debugs(result: Any) -> bool:
    """Whether the cell that gave `result` read the last error (`DEBUGS_THE_LAST_ERROR`)."""
    raw = getattr(getattr(result, "info", None), "raw_cell", None)
    return bool(DEBUGS_THE_LAST_ERROR.search(raw or ""))


def _debuggable_error(result: Any) -> bool:
    """Whether the cell ended in an error worth keeping for %debug: any but running out of
    memory (`out_of_memory_reason`: torch's allocators, cuBLAS, a wrapped one), whose frames
    hold what the next try needs."""
    error = getattr(result, "error_in_exec", None)
    if not isinstance(error, BaseException) or isinstance(error, MemoryError):
        return False
    return "torch" not in sys.modules or out_of_memory_reason(error) is None


def _parse_keep(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"--keep takes comma-separated variable names; not a name: {bad[0]!r}")
    return names


def created_names(
    shell: Any, before: set[str], keep: tuple[str, ...], defined: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """Names the cell added to the user namespace, minus `keep`, IPython's own (`_N`, `_`),
    `_qwen3`, and what the cell imported or defined (`defined`, and any module, function or class):
    dropping them would break the next cell that uses them (a definition that holds tensors
    is named in the report instead, see `kept_definitions`)."""
    hidden = getattr(shell, "user_ns_hidden", {})
    return tuple(
        name
        for name, value in shell.user_ns.items()
        if name not in before
        and name not in keep
        and name not in defined
        and name not in hidden
        and name not in _IPYTHON_OWN
        and name not in _OWN
        and not (name.startswith("_") and name[1:].isdigit())
        and not (name.startswith("_i") and name[2:].isdigit())
        and not isinstance(value, _DEFINITIONS)
    )


def definition_names(tree: ast.Module | None) -> frozenset[str]:
    """The names the body's import, def and class statements bind (`tree`: the body as run;
    None when it did not parse): what it imported or defined whatever the value's type
    (`from math import pi`, a `@functools.cache` function)."""
    if tree is None:
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return frozenset(names)


def kept_definitions(
    shell: Any, before: set[str], defined: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """One line per function or class the cell defined that holds tensors, which `--drop`
    keeps (the next cell may call it): "f (closure) 64.0 MiB kept: defined by this cell,
    `del f` frees it"."""
    lines = []
    for name, value in list(shell.user_ns.items()):
        if name in before:
            continue
        if not isinstance(value, (types.FunctionType, type)) and name not in defined:
            continue
        hint = f"defined by this cell, `del {name}` frees it"
        for holder in definition_holders(name, value, hint):
            lines.append(f"{holder.name} {format_bytes(holder.nbytes)} kept: {holder.hint}")
    return tuple(lines)


def run_cell_body(shell: Any, body: str) -> ast.Module | None:
    """Run `body` in the user namespace the way IPython runs a cell; the tree it ran (None if
    it did not parse).

    The body is transformed (magics, `!cmd`) and AST-transformed like a cell, its nodes run with
    the shell's `ast_node_interactivity` so the last expression goes through the display hook
    (it shows as this cell's Out[N]). An exception is shown with IPython's traceback, starting
    at the body's own line, and recorded on the running cell's ExecutionResult so the cell
    counts as failed (Run All stops) — as in a normal cell. Outside a running cell (no
    ExecutionResult) the exception propagates instead.
    """
    __tracebackhide__ = True
    number = shell.execution_count
    try:
        transformed = shell.transform_cell(body)
    except SyntaxError as exc:  # tokenizing it failed (mixed indentation): as a plain cell says
        if not _show_error(shell, exc, ""):
            raise
        return None
    # One blank line stands for the magic's own line, so tracebacks name the cell's line numbers.
    source = "\n" + transformed
    cell_name = shell.compile.cache(source, number, raw_code=body)
    tree: ast.Module | None = None
    try:
        with shell.display_trap:
            tree = shell.compile.ast_parse(source, filename=cell_name)
            tree = shell.transform_ast(tree)
            for node, mode in _interactive_split(shell, tree.body, body):
                module: ast.mod = (
                    ast.Interactive([node]) if mode == "single" else ast.Module([node], [])
                )
                code = shell.compile(module, cell_name, mode)
                exec(code, shell.user_global_ns, shell.user_ns)
    except BaseException as exc:
        if isinstance(exc, SystemExit) or not _show_error(shell, exc, cell_name):
            raise
    return tree


def _interactive_split(shell: Any, nodes: list[ast.stmt], body: str) -> list[tuple[Any, str]]:
    """(node, "exec" | "single") pairs following IPython's `run_ast_nodes` rules."""
    if not nodes:
        return []
    mode = shell.ast_node_interactivity
    if shell.displayhook.semicolon_at_end_of_expression(body):
        mode = "none"
    nodes = list(nodes)
    if mode == "last_expr_or_assign":
        last = nodes[-1]
        target = None
        if isinstance(last, ast.Assign) and len(last.targets) == 1:
            target = last.targets[0]
        elif isinstance(last, (ast.AugAssign, ast.AnnAssign)):
            target = last.target
        if isinstance(target, ast.Name):
            echo = ast.Expr(ast.Name(target.id, ast.Load()))
            ast.copy_location(echo, last)
            nodes.append(ast.fix_missing_locations(echo))
        mode = "last_expr"
    if mode == "last_expr":
        mode = "last" if isinstance(nodes[-1], ast.Expr) else "none"
    if mode == "all":
        return [(n, "single") for n in nodes]
    if mode == "last":
        return [*((n, "exec") for n in nodes[:-1]), (nodes[-1], "single")]
    return [(n, "exec") for n in nodes]


def _show_error(shell: Any, exc: BaseException, cell_name: str) -> bool:
    """Show `exc` as a cell error and mark the running cell failed; False outside a cell."""
    result = getattr(shell.displayhook, "exec_result", None)
    if result is None:
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != cell_name:
        tb = tb.tb_next
    tb = tb or exc.__traceback__
    # tb_offset=0: the traceback already starts at the body; IPython 8 skipped its first frame
    # (the shell's own, in a plain cell), so the body's line that failed was not shown.
    shell.showtraceback((type(exc), exc.with_traceback(tb), tb), tb_offset=0)
    result.error_in_exec = exc
    return True


def load(ip: Any) -> None:
    """Register the cleanup magics; unloading removes them and the autoclean hook."""
    magics = CleanMagics(ip)
    ip.register_magics(magics)
    lifecycle.on_unload("clean-magics", lambda: unload(ip, magics))


def unload(ip: Any, magics: CleanMagics) -> None:
    """Remove what `load` registered."""
    if magics.autoclean:
        lifecycle.tell("autoclean turned off (%qwen3_autoclean on turns it on again)")
    magics.set_autoclean(False)
    shutdown_nvml()
    lifecycle.remove_magics(
        ip, "CleanMagics", line=("qwen3_clean", "qwen3_autoclean"), cell=("qwen3_clean",)
    )
