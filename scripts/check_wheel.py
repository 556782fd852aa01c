"""Check a built wheel ships what `pip install` users need, and nothing of a development build.

Why: the build hook skips the labextension's build when one exists, so a wheel built from a
working tree (where `make setup` made a development build) shipped that build — source maps,
unminified code, a build log — instead of the production one. `make wheel` builds the
production one first; this says whether it worked.

    python scripts/check_wheel.py dist/qwen3_jupyter-*.whl
"""

from __future__ import annotations

import json
import sys
import zipfile

LABEXTENSION = "data/share/jupyter/labextensions/qwen3-jupyter/"
SERVER_CONFIG = "data/etc/jupyter/jupyter_server_config.d/qwen3_jupyter.json"
QUICKSTART = "qwen3_jupyter/notebooks/quickstart.ipynb"


def problems(wheel: str) -> list[str]:
    """What is wrong with `wheel` (empty: nothing)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        data = next((n.split(".data/")[0] + ".data/" for n in names if ".data/" in n), "")
        found: list[str] = []
        labextension = [n for n in names if n.startswith(data + LABEXTENSION)]
        if not any(n.endswith("/package.json") for n in labextension):
            found.append(f"no labextension under {LABEXTENSION}")
        if not any("/static/remoteEntry." in n for n in labextension):
            found.append("the labextension has no remoteEntry bundle")
        development = [n for n in labextension if n.endswith((".map", "build_log.json"))]
        if development:
            found.append(
                f"a development build of the labextension ({len(development)} files such as "
                f"{development[0].rsplit('/', 1)[-1]}): run `cd labextension && jlpm build:prod`"
            )
        if data + SERVER_CONFIG not in names:
            found.append(f"no server extension config ({SERVER_CONFIG})")
        else:
            config = json.loads(archive.read(data + SERVER_CONFIG))
            enabled = config.get("ServerApp", {}).get("jpserver_extensions", {})
            if not enabled.get("qwen3_jupyter"):
                found.append("the server extension config does not enable qwen3_jupyter")
        if not any(n == "qwen3_jupyter/__init__.py" for n in names):
            found.append("no qwen3_jupyter package")
        if "qwen3_jupyter/py.typed" not in names:  # a user's mypy would skip the package
            found.append("no qwen3_jupyter/py.typed")
        if QUICKSTART not in names:  # `python -m qwen3_jupyter.demo` runs it after pip install
            found.append(f"no {QUICKSTART}")
        if data + LABEXTENSION + "install.json" not in names:  # "installed by pip" in JupyterLab
            found.append(f"no {LABEXTENSION}install.json")
    return found


def main(argv: list[str]) -> int:
    status = 0
    for wheel in argv:
        found = problems(wheel)
        for problem in found:
            print(f"{wheel}: {problem}", file=sys.stderr)
        if found:
            status = 1
        else:
            print(
                f"{wheel}: production labextension, server extension config, package, "
                "quickstart: ok"
            )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
