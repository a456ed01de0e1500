# curvbench — `make help` lists the targets.
# Everything runs inside ./.venv, created and filled by `make install` (the other targets call it).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel of torch lies on this machine's disk; an unpinned torch would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# curvbench CLI flags, e.g. `make overhead ARGS="--device cuda --rounds 30"`
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-slurm test-fast lint format overhead overhead-table figures gridsearch gridsearch-smoke gate gpu-check clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,figures,cluster]"
	@# Reference peers without their torchvision pin (they import without it), plus what they need.
	$(PY) -m pip install --quiet --no-deps backpack-for-pytorch==1.7.1 opacus==1.6.0 deepobs==1.1.2 \
		curvlinops-for-pytorch==3.0.1 asdfghjkl==0.1a5 nngeometry==0.4 einconv==0.1.0 linear_operator==0.6.1
	$(PY) -m pip install --quiet einops unfoldNd opt_einsum scipy
	touch $(STAMP)

install: $(STAMP) ## create .venv and install curvbench with test, reference and figure extras

test: $(STAMP) ## run the whole test suite (oracles, deepobs/backpack references, timing gate)
	$(PY) -m pytest -q

test-fast: $(STAMP) ## the test suite without slow tests
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

overhead: $(STAMP) ## the paper's overhead benchmark (Fig. 6/3) on this machine -> results/overhead/local/<machine>.csv (untracked; CPU defaults: 109 measurements, 7.4-7.6 min measured on 2 idle cores)
	$(VENV)/bin/curvbench overhead $(ARGS)

overhead-table: $(STAMP) ## ours vs BackPACK, per quantity, both networks, batch 128 (the extensions issue's table)
	$(PY) -m bench.overhead.cli_compare_table $(ARGS)

figures: $(STAMP) ## rebuild plots/ and the REPORT.md files from the committed CSVs (overhead: results/overhead/reference/*.csv)
	$(VENV)/bin/curvbench figures $(ARGS)

gridsearch: $(STAMP) ## the paper's full alpha/lambda grid (meant for CUDA; resumable) -> results/gridsearch/local/paper (untracked; committed stores: results/gridsearch/reference/)
	$(VENV)/bin/curvbench gridsearch run $(ARGS)

gridsearch-smoke: $(STAMP) ## a tiny grid on synthetic data, end to end, with a kill -9 and a resume
	$(VENV)/bin/curvbench gridsearch smoke $(ARGS)

test-slurm: $(STAMP) ## SLURM executor tests on a real one-node cluster (root; .ci/slurm-setup.sh first)
	$(PY) -m pytest -q tests/bench/gridsearch/slurm

gate: $(STAMP) ## the CI timing-regression gate alone (reference ratios per device type: bench/overhead/reference_ratios.json)
	$(PY) -m pytest -q -m timing

gpu-check: $(STAMP) ## on a CUDA machine: CUDA tests, a short overhead run, the grid-search smoke; pass/fail per part (< 8 min; ARGS=--save-reference stores results/overhead/reference/<gpu>.csv)
	$(PY) -m bench.overhead.cli_gpu_check $(ARGS)

clean: ## remove caches (keeps .venv, results and plots)
	rm -rf .pytest_cache .ruff_cache .benchmarks build *.egg-info
