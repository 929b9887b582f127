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

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) system-deps lint
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(PY) -m smr demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
