# Every target makes or reuses .venv on its own: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-quick image container-test up down clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,sdk]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mme demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint container/Dockerfile

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

image:
	docker build -f container/Dockerfile -t xgboost-mme:latest .

container-test: $(STAMP)
	bash container/test.sh

up:
	docker compose up -d --build

down:
	docker compose down -v

clean:
	rm -rf $(VENV) models data *.egg-info
