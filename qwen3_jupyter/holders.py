"""What still holds tensor memory after a cleanup, by the name a user would type, biggest first.

Why: "3 GiB still held" is only actionable with "by `df_embeddings`" or "by Out[12]" next to it
(`%qwen3_clean --verbose`), and with the memory the package keeps on purpose named apart."""

from __future__ import annotations

import gc
import sys
import types
from typing import Any

from .cleanup_report import Holder
from .memory import MiB, imported_torch, live_tensor_bytes
from .release_actions import kept_exceptions
from .tensor_scan import (
    TensorScan,
    exception_data,
    is_tensor,
    traceback_locals,
)
from .user_namespace import user_variables


def find_holders(
    shell: Any | None, limit: int = 10, totals: dict[str, int] | None = None
) -> tuple[Holder, ...]:
    """The biggest things that still hold tensor memory, by name, biggest first.

    User variables (and what the user's functions and classes keep inside: closures,
    defaults, lru_cache contents, class attributes), output-cache entries, the last traceback,
    the loaded model; whatever live tensor memory none of them reaches is reported as one
    "other" line (module globals, C extensions).
    """
    from .models import HOLDER

    torch = imported_torch()
    if torch is None:
        return ()
    holders: list[Holder] = []
    reached: dict[tuple[str, int], int] = {}
    stopped: list[str] = []
    walls = namespace_walls(shell)

    def add(name: str, kind: str, obj: Any, hint: str, scan: TensorScan | None = None) -> None:
        if scan is None:
            scan = TensorScan(torch, walls=walls)
            scan.visit(obj)
        if scan.truncated:
            scan.visit_all(obj)
        if scan.stopped:
            stopped.append(name)
        if not scan.found:
            return
        reached.update(scan.storages)
        devices = tuple(sorted(scan.by_device()))
        holders.append(Holder(name, kind, _describe(obj, scan), scan.nbytes(), devices, hint))

    if shell is not None:
        for name, value in user_variables(shell).items():
            if isinstance(value, types.ModuleType):
                continue
            inside = inner_holdings(name, value)
            for inner_name, obj, hint in inside:
                add(inner_name, "variable", obj, hint)
            if not inside:
                add(name, "variable", value, _variable_hint(name, value))
        out = getattr(getattr(shell, "history_manager", None), "output_hist", None) or {}
        for key, value in list(out.items()):
            inside = inner_holdings(f"Out[{key}]", value)  # a function or class shown
            for inner_name, obj, _ in inside:
                add(inner_name, "output", obj, "%qwen3_clean")
            if not inside:
                add(f"Out[{key}]", "output", value, "%qwen3_clean")
    last_tb = getattr(sys, "last_traceback", None)
    if last_tb is not None:
        scan = TensorScan(torch, walls=walls)
        for value in traceback_locals(last_tb):
            scan.visit(value, 1)
        add("last traceback", "traceback", last_tb, "%qwen3_clean", scan)
    for exc in _exceptions_in_sight(shell):
        scan = TensorScan(torch, walls=walls)
        for value in exception_data(exc):
            scan.visit(value, 1)
        add("last exception (args)", "exception", exc, "%qwen3_clean", scan)
    loaded = HOLDER.loaded
    if loaded is not None and loaded.model is not None:
        add(f"model {loaded.name}", "model", loaded.model, "%qwen3 --unload")
    for kept, holding in _kept_holdings():
        add(kept, "kept", holding, "kept for speed: %qwen3 --eager or --unload gives it back")
    total = live_tensor_bytes() if totals is None else totals
    known: dict[str, int] = {}
    for (device, _), size in reached.items():
        known[device] = known.get(device, 0) + size
    other = {d: total[d] - known.get(d, 0) for d in total if total[d] - known.get(d, 0) > 0}
    holders.sort(key=lambda h: h.nbytes, reverse=True)
    result = holders[:limit]
    rest = holders[limit:]
    if rest:  # the list ended at `limit` without a word: 8 MiB of a closure showed nowhere
        devices = tuple(sorted({d for h in rest for d in h.devices}))
        noun = "holder" if len(rest) == 1 else "holders"
        result.append(
            Holder(
                f"{len(rest)} more {noun}",
                "more",
                ", ".join(h.name for h in rest[:5]) + (", …" if len(rest) > 5 else ""),
                sum(h.nbytes for h in rest),
                devices,
                f"each smaller than the {limit} above",
            )
        )
    if sum(other.values()) >= MiB:
        result.append(
            Holder(
                "not reachable from a name",
                "other",
                "tensors",
                sum(other.values()),
                tuple(sorted(other)),
                _other_hint(stopped, HOLDER.use.held_elsewhere),
            )
        )
    return tuple(result)


def _exceptions_in_sight(shell: Any | None) -> list[BaseException]:
    """The last exception as IPython and `sys` keep it, each once."""
    found = [value for _, _, value in kept_exceptions(shell)] if shell is not None else []
    last = getattr(sys, "last_value", None)
    if isinstance(last, BaseException):
        found.append(last)
    return list({id(exc): exc for exc in found}.values())


def _variable_hint(name: str, value: Any) -> str:
    """How to free a variable; a tensor with an autograd graph can also keep just its data."""
    if getattr(value, "grad_fn", None) is not None and is_tensor(value):
        return f"del {name} or {name} = {name}.detach()"
    return f"del {name}"


def _other_hint(stopped: list[str], running: str | None = None) -> str:
    """Where the unattributed tensors may be: past a search that stopped, in a call decoding
    in another thread (its cache and activations: a batch's were blamed on module globals),
    or out of the search's sight."""
    if stopped:
        return f"the search stopped inside {', '.join(stopped)}: they may be there"
    if running is not None:
        return f"mostly the working memory of {running}: it goes when that call ends"
    return "held by module globals, C code or closures outside the user's namespace"


def inner_holdings(name: str, value: Any) -> list[tuple[str, Any, str]]:
    """(holder name, contents, hint) for what a user's function or class keeps inside it.

    The scan does not enter functions and classes (everything is reachable from there), so
    their own contents are named here: closure cells, defaults, an lru_cache's results (C:
    only the garbage collector sees them) and the attributes of a class defined in `__main__`.
    Naming only: the cleanup never deletes a function or class (shown as a cell's output, its
    output-cache entries go, as any output's that holds tensors).
    """
    if _is_lru_cache(value):
        contents = [o for o in gc.get_referents(value) if _cached_result(value, o)]
        return [(f"{name} (lru_cache)", contents, f"{name}.cache_clear() frees it")]
    if isinstance(value, types.FunctionType):
        found: list[tuple[str, Any, str]] = []
        cells = [cell.cell_contents for cell in value.__closure__ or () if _filled(cell)]
        if cells:
            found.append((f"{name} (closure)", _one_or_all(cells), f"del {name}"))
        defaults = [*(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values()]
        if defaults:
            found.append((f"{name} (defaults)", _one_or_all(defaults), f"del {name}"))
        return found
    if isinstance(value, type) and value.__module__ == "__main__":
        return [
            (f"{name}.{attr}", item, f"del {name}.{attr}")
            for attr, item in vars(value).items()
            if not (attr.startswith("__") and attr.endswith("__"))
        ]
    return []


def namespace_walls(shell: Any | None) -> list[Any]:
    """What a holder's walk must not enter: the shell, its namespaces and `__main__`. Each
    reaches every variable, so `ip = get_ipython()`, `out = sys.stdout`, a logger writing to
    it or a finished Thread was listed as holding every tensor of the notebook, with a `del`
    that freed nothing."""
    main = sys.modules.get("__main__")
    found = [main, getattr(main, "__dict__", None)]
    if shell is not None:
        found += [shell, getattr(shell, "user_ns", None), getattr(shell, "user_ns_hidden", None)]
        found += [getattr(shell, "user_global_ns", None), getattr(shell, "history_manager", None)]
    return [wall for wall in found if wall is not None]


def running_shell() -> Any | None:
    ipython = sys.modules.get("IPython")  # never imported here: without it there is no shell
    return ipython.get_ipython() if ipython is not None else None


def definition_holders(name: str, value: Any, hint: str) -> list[Holder]:
    """What a function or class keeps in tensors (closure, defaults, class attributes), one
    Holder each with `hint`: `--drop` keeps definitions (the next cell may call them), so it
    names the ones that hold memory instead of keeping them silently."""
    torch = imported_torch()
    if torch is None:
        return []
    found = []
    walls = namespace_walls(running_shell())
    for inner, obj, _ in inner_holdings(name, value):
        scan = TensorScan(torch, walls=walls)
        scan.visit(obj)
        if scan.truncated:
            scan.visit_all(obj)
        if scan.found:
            devices = tuple(sorted(scan.by_device()))
            found.append(Holder(inner, "definition", "", scan.nbytes(), devices, hint))
    return found


def _is_lru_cache(value: Any) -> bool:
    return all(callable(getattr(value, a, None)) for a in ("cache_clear", "cache_info")) and (
        hasattr(value, "__wrapped__")
    )


def _cached_result(wrapper: Any, obj: Any) -> bool:
    """A referent of an lru_cache wrapper that is its cache (keys, results), not its own
    machinery (its type, wrapped function, `__dict__`)."""
    return (
        not isinstance(obj, type)
        and obj is not wrapper.__wrapped__
        and (obj is not getattr(wrapper, "__dict__", None))
    )


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _one_or_all(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else tuple(items)


def _kept_holdings() -> list[tuple[str, Any]]:
    """(name, object) for what the session's engines keep on purpose (the fast path's cache)."""
    session = sys.modules.get(f"{__package__}.session")
    engines = getattr(getattr(session, "SESSION", None), "engines", {})
    found = []
    for key, engine in list(engines.items()):
        holdings = engine.holdings()
        if holdings:
            found.append((f"{engine.kind} engine ({key}) decode cache", holdings))
    return found


def kept_memory_text() -> tuple[str, ...]:
    """What the session's engines keep between calls on purpose, one phrase each."""
    session = sys.modules.get(f"{__package__}.session")
    keeper = getattr(session, "SESSION", None)
    if keeper is None:
        return ()
    return tuple(k.describe() for k in keeper.kept_memory())


def _describe(obj: Any, scan: TensorScan) -> str:
    torch = scan.torch
    if isinstance(obj, torch.Tensor):
        graph = " + autograd graph" if obj.grad_fn is not None and scan._nodes else ""
        return f"Tensor{list(obj.shape)} {str(obj.dtype).removeprefix('torch.')}{graph}"
    if isinstance(obj, types.TracebackType):
        return f"frames holding {scan.tensor_count} tensors"
    count = f"{scan.tensor_count} tensor{'s' if scan.tensor_count != 1 else ''}"
    return f"{type(obj).__name__} ({count})"
