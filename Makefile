# SMR: `make demo` runs the whole pipeline on synthetic data, `make test` runs lint and tests.
# Both create (or refresh, when pyproject.toml changed) the virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.smr-installed
DEMO_DIR ?= demo-output

.PHONY: all venv test lint demo clean system-deps

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml requirements/constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev]'
	# The embedded Triton server; its own Python package pins numpy<2, which SMR does not need.
	$(PY) -m pip install -q --no-deps 'nvidia-pytriton>=0.5.13'
	touch $(STAMP)

venv: $(STAMP)

# Debian's Prometheus for the monitoring integration tests (skipped when already on PATH).
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
	  || echo "warning: could not install prometheus; monitoring tests will fail"; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(PY) -m smr demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
