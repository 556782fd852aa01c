"""The report of a cleanup: per-device memory before and after, what each release action did,
and (verbose) what still holds memory. Plain frozen values, so the report holds no tensors and
can travel as JSON (the sidebar's "Free memory" button) or to listeners (the gauge).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .memory import MiB, format_bytes
from .python_words import magic_advice_in_python

HOST_NOISE_BYTES = 1 * MiB
"""Host RSS moves by a few hundred KiB on its own (allocator bookkeeping, gc's own lists):
changes smaller than this are not reported as freed."""

Caller = Literal["python", "magic"]
"""Who a cleanup's report advises: a Python caller, or `%qwen3_clean`."""


@dataclass(frozen=True)
class DeviceMemory:
    """What one device holds for this process at one moment, in bytes (None: not measured).

    `tensors`: bytes of live tensors — torch's allocated counter on CUDA (exact and cheap); on
    the CPU the storages of every reachable tensor, which walks every object and is therefore
    measured only when asked for (`count_tensors`, or `verbose`).
    `reserved`: what torch's caching allocator holds from the driver (CUDA only).
    `process`: what the OS or driver charges this process: host RSS for "cpu"; NVML's figure
    for this process on a GPU, None where NVML cannot tell (no NVML, or PIDs from a container).
    """

    device: str
    tensors: int | None
    reserved: int | None
    process: int | None


@dataclass(frozen=True)
class DeviceChange:
    """One device before and after a cleanup."""

    device: str
    before: DeviceMemory
    after: DeviceMemory

    @property
    def freed(self) -> int:
        """Memory returned: NVML's figure for a GPU (else torch reserved); on "cpu" the drop in
        RSS (changes under HOST_NOISE_BYTES count as nothing), whether or not tensors were
        counted, so `--verbose` shows the same headline (`tensors_freed` is its own figure)."""
        if self.device == "cpu":
            rss = drop(self.before.process, self.after.process)
            return rss if rss >= HOST_NOISE_BYTES else 0
        if self.before.process is not None and self.after.process is not None:
            return drop(self.before.process, self.after.process)
        return drop(self.before.reserved, self.after.reserved)

    @property
    def tensors_freed(self) -> int | None:
        """Bytes of tensors that went away, where tensors were measured on both sides."""
        if self.before.tensors is None or self.after.tensors is None:
            return None
        return drop(self.before.tensors, self.after.tensors)

    def describe(self) -> str:
        """'cpu RSS 1.3 GiB -> 1.2 GiB, tensors 64.0 MiB -> 0 B' (one value when unchanged)."""
        if self.device == "cpu":
            parts = [f"cpu RSS {_arrow(self.before.process, self.after.process)}"]
            if self.before.tensors is not None and self.after.tensors is not None:
                parts.append(f"tensors {_arrow(self.before.tensors, self.after.tensors)}")
            return ", ".join(parts)
        parts = [
            f"{self.device} allocated {_arrow(self.before.tensors, self.after.tensors)}",
            f"reserved {_arrow(self.before.reserved, self.after.reserved)}",
        ]
        if self.before.process is not None and self.after.process is not None:
            parts.append(f"process {_arrow(self.before.process, self.after.process)} (NVML)")
        return ", ".join(parts)


@dataclass(frozen=True)
class ActionResult:
    """What one release action did.

    `released`: the references it dropped, by name (`Out[3]`, `sys.last_traceback`, `y`).
    `freed_bytes`: memory that went away while it ran (torch allocated or reserved on CUDA,
    host RSS above the noise floor); `error` is the one-line failure when it failed; `skipped`
    says why it did not run (another thread was using the model).
    """

    name: str
    released: tuple[str, ...] = ()
    freed_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    skipped: str | None = None

    @property
    def freed(self) -> bool:
        return self.freed_bytes > 0


@dataclass(frozen=True)
class Holder:
    """Something that still holds tensor memory after cleanup, and how to let it go."""

    name: str
    kind: str  # "variable", "output", "traceback", "exception", "model", "kept", "more", "other"
    what: str
    nbytes: int
    devices: tuple[str, ...]
    hint: str

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.what} {format_bytes(self.nbytes)} {', '.join(self.devices)}"
            f" ({self.hint})"
        )


@dataclass(frozen=True)
class CleanupReport:
    """What a cleanup freed, which actions freed it, and (verbose) what still holds memory."""

    devices: tuple[DeviceChange, ...]
    actions: tuple[ActionResult, ...]
    holders: tuple[Holder, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    gc_pass: str = ""
    """How the cycle collection went: 'gc of 2,130 new objects' or 'full gc (why)'."""
    gc_incremental: bool = False
    """The gc scanned only objects new since the last cleanup: "nothing to free" would be a
    claim about objects it never looked at (a cycle frozen earlier that became garbage)."""
    kept: tuple[str, ...] = ()
    """What engines keep on purpose and a cleanup leaves alone ('decode cache 448 MiB on
    cuda:0, kept for speed')."""
    verbose: bool = False
    """Holders were looked for (so an empty `holders` means none was found)."""
    caller: Caller = "python"
    """Who reads the advice: "python" is told `qwen3_jupyter.cleanup(full=True)`, "magic"
    (`%qwen3_clean`) `--full` — a Python caller never typed the magic's flags, and outside
    IPython there is no magic to type them to."""

    @property
    def freed_bytes(self) -> int:
        """Memory returned to the OS and the GPU drivers, summed over devices."""
        return sum(change.freed for change in self.devices)

    @property
    def gc_seconds(self) -> float:
        return sum(a.seconds for a in self.actions if a.name == "cycles")

    @property
    def released(self) -> tuple[str, ...]:
        """Every reference dropped by the reference actions, in order."""
        return tuple(r for a in self.actions if a.name in REFERENCE_ACTIONS for r in a.released)

    def device(self, name: str) -> DeviceChange | None:
        return next((d for d in self.devices if d.device == name), None)

    def summary(self) -> str:
        """The one-line report: freed or not, per-device before -> after, what was released."""
        released = self._released_text()
        if self.freed_bytes > 0:
            head = f"cleanup freed {format_bytes(self.freed_bytes)}"
        elif self._tensors_freed():
            head = (
                f"cleanup freed {format_bytes(self._tensors_freed())} of tensors; the process "
                "kept the memory"
            )
        elif released:
            head = "cleanup freed no memory"
        elif self.gc_incremental:
            head = "cleanup: nothing new to free"
        else:
            head = "cleanup: nothing to free"
        parts = [head, *(d.describe() for d in self.devices)]
        if self.freed_bytes <= 0 and self.gc_incremental:
            parts.append(
                "objects older than the last full gc were not scanned "
                f"({self._switch('full')} scans them)"
            )
        if released:
            parts.append(f"released {released}")
            if self.freed_bytes <= 0 and not self.holders:
                parts.append(
                    "nothing holds tensor memory now"
                    if self.verbose
                    else f"{self._switch('verbose')} lists what still holds memory"
                )
        parts.extend(
            f"host heap returned {format_bytes(a.freed_bytes)} freed before this cleanup"
            for a in self.actions
            if a.name == "host heap" and a.freed
        )
        failed = [f"{a.name} failed ({a.error})" for a in self.actions if a.error]
        if self.error:
            failed.append(self.error)
        parts.extend(failed)
        skipped: dict[str, list[str]] = {}  # by why: a busy model, a cleanup in a thread
        for action in self.actions:
            if action.skipped:
                skipped.setdefault(action.skipped, []).append(action.name)
        for why, names in skipped.items():
            meanwhile = (
                " (the figures include what it allocated or freed meanwhile)"
                if why.startswith("the model is busy")
                else ""
            )
            parts.append(f"skipped {', '.join(names)}: {why}{meanwhile}")
        if self.kept:
            parts.append(self._in_callers_words(f"kept on purpose: {'; '.join(self.kept)}"))
        timing = f"{self.seconds * 1000:.0f} ms"
        parts.append(f"{timing}, {self.gc_pass}" if self.gc_pass else timing)
        return " · ".join(parts)

    def details(self) -> list[str]:
        """One line per remaining holder, biggest first (empty unless verbose), its hint in the
        caller's words."""
        return [self._in_callers_words(str(h)) for h in self.holders]

    def _switch(self, name: str) -> str:
        """The cleanup switch `name` as the caller types it: `--full` to the magic,
        `qwen3_jupyter.cleanup(full=True)` to Python."""
        return f"--{name}" if self.caller == "magic" else f"qwen3_jupyter.cleanup({name}=True)"

    def _in_callers_words(self, text: str) -> str:
        return text if self.caller == "magic" else magic_advice_in_python(text)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """`cleanup()` as a cell's last line shows what `%qwen3_clean` prints (its advice in
        Python's words), not a wall of nested fields (the fields stay there to read:
        `report.devices`, `to_dict()`)."""
        printer.text(str(self))

    def __repr__(self) -> str:
        """At a plain `>>>` prompt too (1,014 characters of nested dataclasses)."""
        return str(self)

    def __str__(self) -> str:
        """`print(cleanup())` in a script: the same lines, not the nested dataclass."""
        return "\n".join([self.summary(), *(f"  {line}" for line in self.details())])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for the sidebar's "Free memory" button and the gauge)."""
        return {
            "summary": self.summary(),
            "freed_bytes": self.freed_bytes,
            "seconds": self.seconds,
            "gc_seconds": self.gc_seconds,
            "gc_pass": self.gc_pass,
            "kept": list(self.kept),
            "devices": [
                {
                    "device": d.device,
                    "before": asdict(d.before),
                    "after": asdict(d.after),
                    "freed": d.freed,
                    "tensors_freed": d.tensors_freed,
                }
                for d in self.devices
            ],
            "actions": [
                {
                    "name": a.name,
                    "released": list(a.released),
                    "freed": a.freed,
                    "freed_bytes": a.freed_bytes,
                    "seconds": a.seconds,
                    "error": a.error,
                    "skipped": a.skipped,
                }
                for a in self.actions
            ],
            "holders": [{**asdict(h), "devices": list(h.devices)} for h in self.holders],
            "error": self.error,
        }

    def _tensors_freed(self) -> int:
        """Tensor bytes that went away, summed where they were counted (verbose on the CPU)."""
        return sum(d.tensors_freed or 0 for d in self.devices if d.device == "cpu")

    def _released_text(self) -> str:
        pieces = []
        for action in self.actions:
            if action.name not in REFERENCE_ACTIONS or not action.released:
                continue
            named = _user_facing(action.released)
            shown = ", ".join(named[:4])
            more = len(named) - 4
            suffix = f" +{more} more" if more > 0 else ""
            pieces.append(f"{action.name} ({shown}{suffix})")
        return "; ".join(pieces)


_IPYTHON_INTERNALS = ("last_execution_result.", "displayhook.")


def _user_facing(released: tuple[str, ...]) -> tuple[str, ...]:
    """The references a user knows (`Out[10]`, `_`), without IPython's own copies of them
    (`last_execution_result.result`) where those are there too: `released` keeps them all."""
    known = tuple(r for r in released if not r.startswith(_IPYTHON_INTERNALS))
    return known or released


REFERENCE_ACTIONS = (
    "dropped names",
    "output cache",
    "last exception",
    "generation leftovers",
    "dynamo",
)


def drop(before: int | None, after: int | None) -> int:
    """How much `before` exceeds `after` (0 when either is unknown or memory grew)."""
    if before is None or after is None:
        return 0
    return max(0, before - after)


def _arrow(before: int | None, after: int | None) -> str:
    first, second = format_bytes(before), format_bytes(after)
    return first if first == second else f"{first} -> {second}"
