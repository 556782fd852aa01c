"""`make wheel`'s check (scripts/check_wheel.py) tells a production wheel from one that ships
the development build of the labextension, as a wheel built straight from a set-up tree did."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DATA = "qwen3_jupyter-0.1.0.data/data/"
CONFIG = {"ServerApp": {"jpserver_extensions": {"qwen3_jupyter": True}}}


def check_wheel() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_wheel", ROOT / "scripts/check_wheel.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wheel(path: Path, static: list[str], config: object = CONFIG) -> str:
    labextension = DATA + "share/jupyter/labextensions/qwen3-jupyter/"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("qwen3_jupyter/__init__.py", "")
        archive.writestr("qwen3_jupyter/py.typed", "")
        archive.writestr("qwen3_jupyter/notebooks/quickstart.ipynb", "{}")
        archive.writestr(labextension + "package.json", "{}")
        archive.writestr(labextension + "install.json", "{}")
        for name in static:
            archive.writestr(labextension + name, "")
        config_path = DATA + "etc/jupyter/jupyter_server_config.d/qwen3_jupyter.json"
        archive.writestr(config_path, json.dumps(config))
    return str(path)


def test_a_production_wheel_passes_and_a_development_build_is_named(tmp_path: Path) -> None:
    checker = check_wheel()
    good = wheel(tmp_path / "good.whl", ["static/remoteEntry.1.js", "static/style.js"])
    assert checker.problems(good) == []
    development = ["static/remoteEntry.1.js", "static/remoteEntry.1.js.map", "build_log.json"]
    (problem,) = checker.problems(wheel(tmp_path / "dev.whl", development))
    assert problem.startswith("a development build of the labextension (2 files")
    assert problem.endswith("run `cd labextension && jlpm build:prod`")
    off = wheel(tmp_path / "off.whl", ["static/remoteEntry.1.js"], {"ServerApp": {}})
    assert checker.problems(off) == ["the server extension config does not enable qwen3_jupyter"]
    assert checker.main([good]) == 0 and checker.main([off]) == 1


def test_a_wheel_without_the_quickstart_install_json_or_py_typed_is_named(tmp_path: Path) -> None:
    """`python -m qwen3_jupyter.demo` runs the quickstart it ships (a pip install has no
    repository), and JupyterLab tells a pip-installed extension by its install.json."""
    checker = check_wheel()
    good = wheel(tmp_path / "good.whl", ["static/remoteEntry.1.js"])
    stripped = tmp_path / "stripped.whl"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(stripped, "w") as target:
        for item in source.infolist():
            if not item.filename.endswith(("quickstart.ipynb", "install.json", "py.typed")):
                target.writestr(item, source.read(item))
    assert checker.problems(str(stripped)) == [
        "no qwen3_jupyter/py.typed",
        "no qwen3_jupyter/notebooks/quickstart.ipynb",
        "no data/share/jupyter/labextensions/qwen3-jupyter/install.json",
    ]
