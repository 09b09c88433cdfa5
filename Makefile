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

.PHONY: demo test lint typecheck unit soak bench chaos chaos-explore clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard resilience/*/*.proto)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP) java
	$(BIN)/resilience demo --workdir $(DEMO_DIR) --events $(DEMO_EVENTS)

# The whole suite: lint, types, then every test but the long soaks (marker `slow`).
test: $(STAMP) lint typecheck java
	$(BIN)/pytest -m "not slow" -rs --durations=15

unit: $(STAMP)
	$(BIN)/pytest -m "not slow and not ray and not etcd"

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard checkpoint resilience chaos fusion_jobs tests bench examples)

typecheck: $(STAMP)
	$(BIN)/mypy

# The Java library (java/src) against the ray_dist.jar of the venv's Ray wheel. Rebuilt
# only when a source (or the installed Ray) is newer than the jar; skipped, not failed,
# without a JDK (tests marked `java` then skip with the reason).
.PHONY: java
JAVA_SRC   := $(shell find java/src -name '*.java' 2>/dev/null)
JAVA_BUILD := build/java
JAVA_JAR   := $(JAVA_BUILD)/fusion-resilience.jar
ifeq ($(and $(shell command -v javac 2>/dev/null),$(shell command -v jar 2>/dev/null)),)
java:
	@echo "java: javac/jar (JDK 17+) not found on PATH; skipping the Java build (tests marked java will skip)"
else
java: $(JAVA_JAR)
endif

$(JAVA_JAR): $(JAVA_SRC) $(STAMP)
	@rm -rf $(JAVA_BUILD)/classes && mkdir -p $(JAVA_BUILD)/classes
	javac --release 17 -encoding UTF-8 -Xlint:all -Werror -d $(JAVA_BUILD)/classes \
	  -cp "$$(ls $(VENV)/lib/python*/site-packages/ray/jars/ray_dist.jar | head -n 1)" $(JAVA_SRC)
	jar --create --file $@.tmp -C $(JAVA_BUILD)/classes .
	@mv $@.tmp $@

soak: $(STAMP)
	$(BIN)/pytest -m slow --timeout=3600

# Every benchmark, one after the other (long: ~30 min on 2 cores). Figures: BENCHMARKS.md.
BENCHES := payments_throughput checkpoint_overhead recovery_time incremental_state \
           actor_overhead actor_recovery java_stage replication drills
bench: $(STAMP) java
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

# Every shipped scenario, each with its JSON and HTML report under build/chaos/.
# `make test` runs a fast subset; this is the full set (~10 min on 2 cores).
CHAOS_OUT := build/chaos
SCENARIOS := $(sort $(wildcard scenarios/*.yaml))
chaos: $(STAMP) java
	@mkdir -p $(CHAOS_OUT); failed=""; \
	for s in $(SCENARIOS); do n=$$(basename $$s .yaml); rm -rf $(CHAOS_OUT)/$$n; \
	  $(BIN)/resilience chaos run $$s --quiet --workdir $(CHAOS_OUT)/$$n \
	    --json $(CHAOS_OUT)/$$n.json --html $(CHAOS_OUT)/$$n.html || failed="$$failed $$n"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED:$$failed"; exit 1; fi; echo "all scenarios passed"

# A randomized campaign: RUNS schedules drawn by hypothesis, a failure shrunk and saved.
# CAMPAIGN=scenarios/random-etcd.yaml adds etcd member kills and pauses (3-member cluster).
RUNS ?= 20
CAMPAIGN ?= scenarios/random-campaign.yaml
chaos-explore: $(STAMP) java
	rm -rf $(CHAOS_OUT)/explore-$(basename $(notdir $(CAMPAIGN)))
	$(BIN)/resilience chaos explore $(CAMPAIGN) --runs $(RUNS) \
	  --workdir $(CHAOS_OUT)/explore-$(basename $(notdir $(CAMPAIGN))) \
	  --json $(CHAOS_OUT)/explore-$(basename $(notdir $(CAMPAIGN))).json

clean:
	rm -rf $(VENV) build $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis
