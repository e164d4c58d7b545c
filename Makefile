# make run   set up .venv, then run the default benchmark (snakemake --cores all)
# make test  set up .venv, then run the test suite (includes the smoke preset end to end)
# make test-slurm  as root: a one-node SLURM cluster on localhost runs part of the smoke preset
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HOME := $(CURDIR)/.hf_home
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run smoke test test-slurm lint report paper clean

setup: $(STAMP)

$(STAMP): envs/requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r envs/requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/snakemake --cores all

smoke: setup
	$(BIN)/snakemake --cores all --configfile config/presets/smoke.yaml

test: setup
	$(BIN)/python -m pytest -q

test-slurm: setup
	.ci/slurm/test.sh

lint: setup
	$(BIN)/snakemake --lint

report: setup
	$(BIN)/snakemake --report results/default/report.html

clean:
	rm -rf results/default results/smoke logs benchmarks .snakemake
