# Every target makes or reuses .venv on its own, installing only what it needs: a fresh machine needs
# only Python 3.11+ and make. One stamp per set of extras, so adding one later installs just that.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
RUNTIME := $(VENV)/.installed-runtime
TEST_DEPS := $(VENV)/.installed-test
BENCH_DEPS := $(VENV)/.installed-bench

.PHONY: install demo test lint bench bench-quick image container-test up down clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	@echo "== creating the virtualenv $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip

# $(call install,WHAT,HOW LONG,EXTRAS): pip shows only errors (-qq: not setuptools' notes on editable
# installs, nor a machine's pip.conf complaining about its own index folders), so say what is coming and
# roughly how long. Every extra includes the runtime, so each stamp also marks the runtime installed.
define install
@echo "== installing $(1) into $(VENV): about $(2) the first time"
$(PIP) install -qq -e '.$(3)'
@touch $@ $(RUNTIME)
endef
RUNTIME_WHAT := the server and training (xgboost, numpy, uvicorn, boto3)
TEST_WHAT := the test tools (pytest, moto, ruff, hadolint, the SageMaker SDK, matplotlib)
TEST_EXTRAS := [dev,sdk,bench]
BENCH_WHAT := the benchmark tools (matplotlib, py-spy)

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(call install,$(RUNTIME_WHAT),a minute,)

$(TEST_DEPS): pyproject.toml | $(BIN)/python
	$(call install,$(TEST_WHAT),two minutes,$(TEST_EXTRAS))

$(BENCH_DEPS): pyproject.toml | $(BIN)/python
	$(call install,$(BENCH_WHAT),a minute,[bench])

install: $(RUNTIME)

demo: $(RUNTIME)
	$(BIN)/mme demo

test: $(TEST_DEPS)
	$(BIN)/python -m pytest -q

lint: $(TEST_DEPS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint container/Dockerfile

# A full run rewrites the committed report, and fails naming the targets it missed.
bench: $(BENCH_DEPS)
	$(BIN)/python -m bench

# A quick run is for a look, not a record: its report goes to bench/.work/quick/, never docs/.
bench-quick: $(BENCH_DEPS)
	$(BIN)/python -m bench --quick

image:
	docker build -f container/Dockerfile -t xgboost-mme:latest .

container-test: $(TEST_DEPS)
	bash container/test.sh

up:
	@VENV=$(VENV) bash container/compose.sh up -d --build

down:
	@VENV=$(VENV) bash container/compose.sh down -v

clean:
	rm -rf $(VENV) models data *.egg-info
