# AdPlatform — run `make help` for the targets.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export ADPLATFORM_HOME ?= $(CURDIR)/workspace

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast bench train-full lint clean

help:  ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install pinned dependencies (constraints.txt)

demo: setup  ## run the whole loop on embedded defaults and print a summary
	$(BIN)/adplatform demo

# Two pytest-xdist workers, one test file per worker at a time (module fixtures such as
# a private world or a started server are built once): 11.3 -> 7.8 min on 2 cores.
TEST_WORKERS ?= 2

test: setup  ## run every test (unit, integration, slow) as CI does
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## the tests without the `slow` marker
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

bench: setup  ## benchmarks: print tables, write JSON under $(ADPLATFORM_HOME)/bench
	$(BIN)/python -m bench

# The quality run of issue 4: a fresh 14-day world (seed 7) in its own home, offline
# features, `train all --size full`, then every threshold checked (exit 1 on a miss).
TRAIN_FULL_HOME     ?= $(ADPLATFORM_HOME)/train-full
TRAIN_FULL_DAYS     ?= 14
TRAIN_FULL_REQUESTS ?= 150000
TRAIN_FULL_FLAGS    ?=
TRAIN_FULL_USERS    ?=   # people in the world; empty: WorldConfig's 50,000

train-full: setup  ## 14-day world -> train all --size full -> report JSON -> threshold table
	rm -rf $(TRAIN_FULL_HOME)
	ADPLATFORM_HOME=$(TRAIN_FULL_HOME) $(BIN)/adplatform simulate --days $(TRAIN_FULL_DAYS) \
		--requests-per-day $(TRAIN_FULL_REQUESTS) --seed 7 \
		$(if $(strip $(TRAIN_FULL_USERS)),--users $(TRAIN_FULL_USERS))
	ADPLATFORM_HOME=$(TRAIN_FULL_HOME) $(BIN)/adplatform features materialize --offline-only
	ADPLATFORM_HOME=$(TRAIN_FULL_HOME) $(BIN)/adplatform train all --size full \
		--report $(TRAIN_FULL_HOME)/train-full-report.json $(TRAIN_FULL_FLAGS)
	$(BIN)/python -m training.check_report $(TRAIN_FULL_HOME)/train-full-report.json

lint: setup  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy adplatform features training models serving decisioning mlops simulator bench

clean:  ## remove the workspace (keeps .venv)
	rm -rf workspace
