# SMR: `make demo` runs the whole pipeline on synthetic data, `make test` runs lint and tests.
# Both create (or refresh, when pyproject.toml changed) the virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.smr-installed
LINKED := $(VENV)/.smr-linked
DEMO_DIR ?= demo-output

.PHONY: all venv test lint typecheck demo clean system-deps

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml requirements/constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev]' --config-settings editable_mode=strict
	# The embedded Triton server; its own Python package pins numpy<2, which SMR does not need.
	$(PY) -m pip install -q --no-deps 'nvidia-pytriton>=0.5.13'
	touch $(STAMP)

# The strict editable install links every module file into build/__editable__.*/smr/ (train/*.py as
# smr/train/*.py, ...), a folder that editors and type checkers can read; they cannot follow the
# import hook of pip's default editable mode. A module added or removed changes its folder's time:
# link again (no download, a few seconds).
PACKAGE_DIRS := smr smr/core smr/data smr/synth train export serving serving/triton_models clients
$(LINKED): $(STAMP) $(PACKAGE_DIRS)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
	touch $(LINKED)

venv: $(LINKED)

# Debian's Prometheus (monitoring integration tests) and Chromium (the report's rendering test),
# installed only when missing.
SYSTEM_PACKAGES := prometheus chromium
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	  || echo "warning: could not install$$missing; the tests that need them will fail"; \
	fi

lint: $(LINKED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# smr.core and the client's public API; settings in pyproject.toml's [tool.mypy]
MYPY_TARGETS := smr/core clients/client.py clients/aio.py clients/results.py clients/model_info.py
typecheck: $(LINKED)
	$(VENV)/bin/mypy $(MYPY_TARGETS)

test: $(LINKED) system-deps lint typecheck
	$(VENV)/bin/pytest

demo: $(LINKED)
	$(PY) -m smr demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache build/__editable__*
