"""A fake `pynvml` (nvidia-ml-py) module: the one boundary tests may replace.

Describe GPUs with `FakeGpu`, build a `FakeNvml`, and either hand `fake.module` to
`NvmlReader(nvml=...)` or `fake.install()` it as `sys.modules["pynvml"]`. It behaves like NVML
where the reader depends on it: calls before `nvmlInit` fail, init is reference counted, the v2
memory call can be missing, MIG instances hang off their parent, a process's memory can be
unknown (None), any call can start failing (a lost GPU) from some point on, single calls can
fail on one GPU, and reads can block (`reads_open`).

Child processes (kernels, Jupyter servers) get the fake through `child_env(fake, tmp_dir)`: it
writes the fake's spec as JSON plus a `sitecustomize.py` that calls `install_from_env()`, and
returns the environment variables that make the child import it. Production code knows nothing
of this. In a kernel, `sys.modules["pynvml"]._fake` is the live `FakeNvml`; with `stats_path`
set, the child writes its call counters there (on init, shutdown and every device count).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

MiB = 1024 * 1024
GiB = 1024 * MiB

ENV_SPEC = "QWEN3_JUPYTER_TEST_FAKE_NVML"
ROOT = Path(__file__).resolve().parents[1]

SELF = -1
"""A pid in a process list that stands for the process that installed the fake (the kernel)."""

NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
UNINITIALIZED = 1
UNKNOWN = 999

_ERRORS = {
    UNINITIALIZED: ("Uninitialized", "Uninitialized"),
    NOT_SUPPORTED: ("NotSupported", "Not Supported"),
    NO_PERMISSION: ("NoPermission", "Insufficient Permissions"),
    NOT_FOUND: ("NotFound", "Not Found"),
    DRIVER_NOT_LOADED: ("DriverNotLoaded", "Driver Not Loaded"),
    LIBRARY_NOT_FOUND: ("LibraryNotFound", "NVML Shared Library Not Found"),
    FUNCTION_NOT_FOUND: ("FunctionNotFound", "Function Not Found"),
    GPU_IS_LOST: ("GpuIsLost", "GPU is lost"),
    UNKNOWN: ("Unknown", "Unknown Error"),
}


@dataclass
class FakeProcess:
    """One entry of a running-processes list; `used` None is NVML's "not available"."""

    pid: int
    used: int | None = None


@dataclass
class FakeGpu:
    """One GPU as the fake reports it. `used` is what the v2 call says; v1 adds `reserved`.

    `mig` set (even to []) means MIG mode is enabled and lists the instances; None means the GPU
    does not support MIG. `utilization` None makes the call answer "not supported". `lost` makes
    every call on this GPU raise GPU_IS_LOST. `errors` makes single calls on this GPU fail with
    an NVML code, as real drivers do: NO_PERMISSION for a MIG parent's memory or process list in
    a container, FUNCTION_NOT_FOUND for the v3 process list on drivers before R510 (whose `_v2`
    call still answers). The key "nvmlDeviceGetMemoryInfo_v2" fails only the v2 memory call
    (WSL drivers answer it with UNKNOWN while v1 still works).
    """

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    total: int = 80 * GiB
    used: int = 0
    reserved: int = 512 * MiB
    utilization: int | None = 0
    processes: list[FakeProcess] = field(default_factory=list)
    graphics: list[FakeProcess] = field(default_factory=list)
    mig: list[FakeGpu] | None = None
    lost: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FakeGpu:
        data = dict(data)
        data["processes"] = [FakeProcess(**p) for p in data.get("processes", [])]
        data["graphics"] = [FakeProcess(**p) for p in data.get("graphics", [])]
        if data.get("mig") is not None:
            data["mig"] = [cls.from_dict(m) for m in data["mig"]]
        return cls(**data)


def gpu_uuid(index: int, mig: int | None = None) -> str:
    """A stable, valid-looking UUID for fake GPU `index` (MIG instance `mig`)."""
    if mig is None:
        return f"GPU-{index:08x}-1111-2222-3333-{index:012x}"
    return f"MIG-{index:08x}-{mig:04x}-2222-3333-{index:012x}"


@dataclass
class _Handle:
    gpu: FakeGpu
    index: int
    parent: _Handle | None = None


class FakeNvml:
    """The fake library plus its bookkeeping (calls, init/shutdown counts, failure switches)."""

    def __init__(
        self,
        gpus: Sequence[FakeGpu] = (),
        *,
        supports_v2: bool = True,
        wrapper_has_v2: bool = True,
        driver_version: str = "550.54.15",
        init_error: int | None = None,
        fail_after_reads: int | None = None,
        fail_error: int = GPU_IS_LOST,
        stats_path: str | None = None,
    ) -> None:
        self.gpus = list(gpus)
        for i, gpu in enumerate(self.gpus):
            gpu.uuid = gpu.uuid or gpu_uuid(i)
            for j, inst in enumerate(gpu.mig or []):
                inst.uuid = inst.uuid or gpu_uuid(i, j)
        self.supports_v2 = supports_v2
        self.wrapper_has_v2 = wrapper_has_v2
        self.driver_version = driver_version
        self.init_error = init_error
        self.fail_after_reads = fail_after_reads
        self.fail_error = fail_error
        self.stats_path = stats_path
        self.failing: int | None = None
        self.reads_open = threading.Event()
        """Cleared, every device count waits for it: an NVML call that blocks (a GPU reset)."""
        self.reads_open.set()
        self.calls: Counter[str] = Counter()
        self.init_count = 0
        self.shutdown_count = 0
        self.reads = 0
        self.module = self._build_module()

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def with_gpus(cls, count: int, **options: Any) -> FakeNvml:
        """`count` idle H100s with distinct UUIDs."""
        return cls([FakeGpu() for _ in range(count)], **options)

    def to_spec(self) -> dict[str, Any]:
        return {
            "gpus": [asdict(g) for g in self.gpus],
            "supports_v2": self.supports_v2,
            "wrapper_has_v2": self.wrapper_has_v2,
            "driver_version": self.driver_version,
            "init_error": self.init_error,
            "fail_after_reads": self.fail_after_reads,
            "fail_error": self.fail_error,
            "stats_path": self.stats_path,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FakeNvml:
        spec = dict(spec)
        gpus = [FakeGpu.from_dict(g) for g in spec.pop("gpus", [])]
        return cls(gpus, **spec)

    # -- switches and accounting ---------------------------------------------------------------

    def fail(self, code: int = GPU_IS_LOST) -> None:
        """From now on every call except init/shutdown raises NVMLError(code)."""
        self.failing = code

    def heal(self) -> None:
        self.failing = None
        self.fail_after_reads = None
        for gpu in self.gpus:
            gpu.lost = False

    @property
    def open_handles(self) -> int:
        """nvmlInit calls not yet matched by nvmlShutdown."""
        return self.init_count - self.shutdown_count

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "total_calls": self.total_calls,
            "reads": self.reads,
            "init_count": self.init_count,
            "shutdown_count": self.shutdown_count,
            "open_handles": self.open_handles,
        }

    def write_stats(self) -> None:
        if self.stats_path:
            tmp = f"{self.stats_path}.tmp{os.getpid()}"
            Path(tmp).write_text(json.dumps(self.stats()))
            os.replace(tmp, self.stats_path)

    def install(self) -> FakeNvml:
        """Become `sys.modules["pynvml"]` (see `installed` for a scoped version)."""
        sys.modules["pynvml"] = self.module
        return self

    @contextmanager
    def installed(self) -> Iterator[FakeNvml]:
        previous = sys.modules.get("pynvml")
        self.install()
        try:
            yield self
        finally:
            if previous is None:
                sys.modules.pop("pynvml", None)
            else:
                sys.modules["pynvml"] = previous

    # -- the module -----------------------------------------------------------------------------

    def _build_module(self) -> types.ModuleType:
        module = types.ModuleType("pynvml", "Fake nvidia-ml-py for tests (tests/fake_nvml.py).")
        error = _error_classes(module)
        fake = self

        def raise_(code: int) -> NoReturn:
            raise error(code)

        def api(name: str, *, needs_init: bool = True) -> Callable[[Callable[..., Any]], Any]:
            def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
                def call(*args: Any, **kwargs: Any) -> Any:
                    fake.calls[name] += 1
                    if needs_init:
                        if fake.open_handles <= 0:
                            raise_(UNINITIALIZED)
                        if fake.failing is not None:
                            raise_(fake.failing)
                    for arg in args:
                        if isinstance(arg, _Handle) and (
                            arg.gpu.lost or (arg.parent is not None and arg.parent.gpu.lost)
                        ):
                            raise_(GPU_IS_LOST)
                        if isinstance(arg, _Handle) and name in arg.gpu.errors:
                            raise_(arg.gpu.errors[name])
                    return fn(*args, **kwargs)

                call.__name__ = name
                setattr(module, name, call)
                return call

            return wrap

        @api("nvmlInit", needs_init=False)
        def _init() -> None:
            if fake.init_error is not None:
                raise_(fake.init_error)
            fake.init_count += 1
            fake.write_stats()

        @api("nvmlShutdown", needs_init=False)
        def _shutdown() -> None:
            if fake.open_handles <= 0:
                raise_(UNINITIALIZED)
            fake.shutdown_count += 1
            fake.write_stats()

        @api("nvmlErrorString", needs_init=False)
        def _error_string(code: int) -> str:
            return _ERRORS.get(code, ("", f"NVML error {code}"))[1]

        @api("nvmlSystemGetDriverVersion")
        def _driver() -> str:
            return fake.driver_version

        @api("nvmlDeviceGetCount")
        def _count() -> int:
            fake.reads_open.wait()
            fake.reads += 1
            fake.write_stats()
            if fake.fail_after_reads is not None and fake.reads > fake.fail_after_reads:
                fake.failing = fake.fail_error
                raise_(fake.fail_error)
            return len(fake.gpus)

        @api("nvmlDeviceGetHandleByIndex")
        def _by_index(index: int) -> _Handle:
            if not 0 <= index < len(fake.gpus):
                raise_(2)
            handle = _Handle(fake.gpus[index], index)
            if handle.gpu.lost:
                raise_(GPU_IS_LOST)
            return handle

        @api("nvmlDeviceGetHandleByUUID")
        def _by_uuid(uuid: str | bytes) -> _Handle:
            text = uuid.decode() if isinstance(uuid, bytes) else uuid
            for i, gpu in enumerate(fake.gpus):
                if gpu.uuid == text:
                    return _Handle(gpu, i)
                for j, inst in enumerate(gpu.mig or []):
                    if inst.uuid == text:
                        return _Handle(inst, j, _Handle(gpu, i))
            raise_(NOT_FOUND)
            raise AssertionError

        @api("nvmlDeviceGetIndex")
        def _index(handle: _Handle) -> int:
            if handle.parent is not None:
                raise_(NOT_SUPPORTED)
            return handle.index

        @api("nvmlDeviceGetName")
        def _name(handle: _Handle) -> str:
            return handle.gpu.name

        @api("nvmlDeviceGetUUID")
        def _uuid(handle: _Handle) -> str:
            return handle.gpu.uuid

        @api("nvmlDeviceGetMemoryInfo")
        def _memory(handle: _Handle, version: int | None = None) -> types.SimpleNamespace:
            gpu = handle.gpu
            if version:
                if not fake.wrapper_has_v2:
                    raise TypeError("nvmlDeviceGetMemoryInfo() got an unexpected keyword argument")
                if not fake.supports_v2:
                    raise_(NOT_SUPPORTED)
                if "nvmlDeviceGetMemoryInfo_v2" in gpu.errors:
                    raise_(gpu.errors["nvmlDeviceGetMemoryInfo_v2"])
                used = gpu.used
                return types.SimpleNamespace(
                    version=version,
                    total=gpu.total,
                    reserved=gpu.reserved,
                    used=used,
                    free=gpu.total - gpu.reserved - used,
                )
            used = min(gpu.total, gpu.used + gpu.reserved)
            return types.SimpleNamespace(total=gpu.total, used=used, free=gpu.total - used)

        @api("nvmlDeviceGetUtilizationRates")
        def _utilization(handle: _Handle) -> types.SimpleNamespace:
            if handle.parent is not None or handle.gpu.utilization is None:
                raise_(NOT_SUPPORTED)
            return types.SimpleNamespace(gpu=handle.gpu.utilization, memory=0)

        def processes(entries: list[FakeProcess]) -> list[types.SimpleNamespace]:
            return [
                types.SimpleNamespace(
                    pid=os.getpid() if p.pid == SELF else p.pid,
                    usedGpuMemory=p.used,
                    gpuInstanceId=0xFFFFFFFF,
                    computeInstanceId=0xFFFFFFFF,
                )
                for p in entries
            ]

        def compute(handle: _Handle) -> list[types.SimpleNamespace]:
            gpu = handle.gpu
            if gpu.mig is not None and not gpu.processes:
                return processes([p for inst in gpu.mig for p in inst.processes])
            return processes(gpu.processes)

        def graphics(handle: _Handle) -> list[types.SimpleNamespace]:
            return processes(handle.gpu.graphics)

        # nvidia-ml-py's unversioned calls are the v3 entry points; the v2 ones exist too.
        for suffix in ("", "_v2"):
            api(f"nvmlDeviceGetComputeRunningProcesses{suffix}")(compute)
            api(f"nvmlDeviceGetGraphicsRunningProcesses{suffix}")(graphics)

        @api("nvmlDeviceGetMigMode")
        def _mig_mode(handle: _Handle) -> list[int]:
            if handle.parent is not None or handle.gpu.mig is None:
                raise_(NOT_SUPPORTED)
            return [1, 1]

        @api("nvmlDeviceGetMaxMigDeviceCount")
        def _mig_count(handle: _Handle) -> int:
            if handle.gpu.mig is None:
                raise_(NOT_SUPPORTED)
            return 7

        @api("nvmlDeviceGetMigDeviceHandleByIndex")
        def _mig_handle(handle: _Handle, index: int) -> _Handle:
            instances = handle.gpu.mig or []
            if not 0 <= index < len(instances):
                raise_(NOT_FOUND)
            return _Handle(instances[index], index, handle)

        @api("nvmlDeviceIsMigDeviceHandle")
        def _is_mig(handle: _Handle) -> int:
            return int(handle.parent is not None)

        @api("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        def _mig_parent(handle: _Handle) -> _Handle:
            if handle.parent is None:
                raise_(2)
            return handle.parent

        if self.wrapper_has_v2:
            module.nvmlMemory_v2 = 0x02000028  # type: ignore[attr-defined]
        module.NVML_DEVICE_MIG_DISABLE = 0  # type: ignore[attr-defined]
        module.NVML_DEVICE_MIG_ENABLE = 1  # type: ignore[attr-defined]
        module._fake = self  # type: ignore[attr-defined]
        return module


def _error_classes(module: types.ModuleType) -> type[Exception]:
    """NVMLError with one subclass per code, mapped in `__new__` like nvidia-ml-py does."""

    class NVMLError(Exception):
        _classes: dict[int, type[NVMLError]] = {}  # noqa: RUF012
        value: int

        def __new__(cls, value: int) -> NVMLError:
            if cls is NVMLError:
                cls = NVMLError._classes.get(value, cls)
            obj = Exception.__new__(cls)
            obj.value = value
            return obj

        def __init__(self, value: int) -> None:
            super().__init__(value)
            self.value = value

        def __str__(self) -> str:
            return _ERRORS.get(self.value, ("", f"NVML error {self.value}"))[1]

    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    for code, (suffix, _) in _ERRORS.items():
        sub = type(f"NVMLError_{suffix}", (NVMLError,), {})
        NVMLError._classes[code] = sub
        setattr(module, f"NVMLError_{suffix}", sub)
        setattr(module, f"NVML_ERROR_{_snake(suffix)}", code)
    return NVMLError


def _snake(name: str) -> str:
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()


# -- child processes --------------------------------------------------------------------------

_SITECUSTOMIZE = """\
# Written by tests/fake_nvml.py: installs the fake pynvml in this test child process.
from tests.fake_nvml import install_from_env

install_from_env()
"""


def install_from_env() -> FakeNvml | None:
    """Install the fake described by $QWEN3_JUPYTER_TEST_FAKE_NVML (a JSON spec), if set."""
    path = os.environ.get(ENV_SPEC)
    if not path:
        return None
    fake = FakeNvml.from_spec(json.loads(Path(path).read_text()))
    fake.install()
    if fake.stats_path:
        atexit.register(fake.write_stats)
    return fake


def child_env(fake: FakeNvml, directory: Path) -> dict[str, str]:
    """Environment for a child process (kernel, server) that must import `fake` as pynvml.

    Writes `spec.json` and `sitecustomize.py` into `directory`; merge the result into the
    child's environment (e.g. `Kernel({**kernel_env, **child_env(fake, tmp_path)})`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / "fake-nvml-spec.json"
    spec.write_text(json.dumps(fake.to_spec()))
    (directory / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = [str(directory), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {ENV_SPEC: str(spec), "PYTHONPATH": os.pathsep.join(path)}


def read_stats(path: str | Path) -> dict[str, Any]:
    """The counters a child's fake wrote to its `stats_path`."""
    return dict(json.loads(Path(path).read_text()))
