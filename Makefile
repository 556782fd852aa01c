# The README's contract: `make demo` and `make test` set everything up in .venv/ and run.
# Both are idempotent: setup is skipped while .venv/.setup-done is newer than what it installs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
LABEXT_STAMP := $(VENV)/.labextension-done
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

LABEXT_SOURCES := $(shell find labextension/src labextension/style labextension/schema -type f 2>/dev/null) \
	labextension/package.json labextension/yarn.lock labextension/tsconfig.json

.PHONY: setup demo test lint lab bench clean chromium wheel

setup: $(STAMP) $(LABEXT_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch: the CPU build from requirements-torch-cpu.txt when no NVIDIA GPU is present, so the
# project's range never pulls a multi-GB CUDA build onto a CPU machine.
# SKIP_JUPYTER_BUILDER: the labextension is built once, by the step below, not also by
# the package's build hook here (that ran jlpm install and build a second time).
$(STAMP): $(VENV)/bin/python pyproject.toml requirements-torch-cpu.txt
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing torch from the project's range"; \
	else \
		echo "No NVIDIA GPU: installing the CPU build of torch (requirements-torch-cpu.txt)"; \
		$(PY) -m pip install -qq -r requirements-torch-cpu.txt; \
	fi
	$(PY) -m pip install -qq "hatchling>=1.21" "hatch-jupyter-builder>=0.9" editables "jupyterlab>=4.6,<4.7"
	SKIP_JUPYTER_BUILDER=1 $(PY) -m pip install -qq --no-build-isolation -e ".[test]"
	@touch $@

# The JupyterLab extension, built from labextension/ with the JupyterLab that pip installed,
# and linked into the venv so `jupyter lab` serves the working tree's build.
$(LABEXT_STAMP): $(STAMP) $(LABEXT_SOURCES)
	cd labextension && jlpm install --immutable && jlpm build
	$(VENV)/bin/jupyter-builder develop --overwrite . >/dev/null
	@touch $@

# The browser tests drive /usr/bin/chromium (Playwright with executable_path).
chromium:
	@[ -x /usr/bin/chromium ] || \
		{ echo "Installing Debian's chromium for the browser tests"; \
		  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		    apt-get install -y -qq chromium >/dev/null; } 2>/dev/null || \
		  { echo "make test needs /usr/bin/chromium for the browser tests and could not" \
		         "install it: run 'sudo apt-get install chromium' (Debian), then make test again" >&2; \
		    exit 1; }; }

demo: setup
	$(PY) -m qwen3_jupyter.demo notebooks/quickstart.ipynb --out out/

lint: setup
	$(PY) -m ruff check qwen3_jupyter tests
	$(PY) -m ruff format --check qwen3_jupyter tests
	$(PY) -m mypy
	cd labextension && jlpm lint:check

# Two pytest workers, a test file each at a time (module-scoped kernels stay whole): one test
# mostly waits on one single-threaded kernel, and a second worker fills the idle core (on 2 cores
# pytest took 990 s serially, 777-789 s so from clean clones). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: setup chromium
	cd labextension && jlpm lint:check && jlpm test
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Jupyter refuses to start as root unless told (a container's usual user).
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# A wheel for `pip install` (no Node needed there): the labextension's production build first —
# the build hook skips building when a build exists, and `setup` made a development one (source
# maps, a build log), which the wheel shipped — then the wheel, then a check of what it holds;
# last, the development build again, which `jupyter lab` here serves (setup would not redo it).
wheel: setup
	cd labextension && jlpm build:prod
	rm -rf dist && $(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	$(PY) scripts/check_wheel.py dist/*.whl
	cd labextension && jlpm build >/dev/null

bench: setup
	$(PY) -m qwen3_jupyter.bench decay
	$(PY) -m qwen3_jupyter.bench overhead
	$(PY) -m qwen3_jupyter.bench cleanup
	$(PY) -m qwen3_jupyter.bench monitor
	$(PY) -m qwen3_jupyter.bench endpoint
	$(PY) -m qwen3_jupyter.bench speed
	$(PY) -m qwen3_jupyter.bench step
	$(PY) -m qwen3_jupyter.bench attention
	$(PY) -m qwen3_jupyter.bench remote

clean:
	rm -rf $(VENV) out test-output dist qwen3_jupyter/labextension labextension/node_modules labextension/lib
