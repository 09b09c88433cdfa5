# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the package with its extras.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PY     := $(BIN)/python
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONDONTWRITEBYTECODE := 1

DEMO_DIR    ?= demo-work
DEMO_EVENTS ?= 200000

.PHONY: demo test lint typecheck unit soak bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/resilience demo --workdir $(DEMO_DIR) --events $(DEMO_EVENTS)

# The whole suite: lint, types, then every test but the long soaks (marker `slow`).
test: $(STAMP) lint typecheck
	$(BIN)/pytest -m "not slow" --durations=15

unit: $(STAMP)
	$(BIN)/pytest -m "not slow and not ray and not etcd"

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard checkpoint resilience chaos tests bench examples)

typecheck: $(STAMP)
	$(BIN)/mypy

soak: $(STAMP)
	$(BIN)/pytest -m slow --timeout=3600

bench: $(STAMP)
	$(PY) bench/payments_throughput.py

clean:
	rm -rf $(VENV) build $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
