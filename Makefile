# make run   set up .venv, then run the default benchmark (snakemake --cores all)
# make test  set up .venv, then run the test suite (includes the smoke preset end to end)
# make test-slurm  as root: a one-node SLURM cluster on localhost runs part of the smoke preset
# EXP=<name> picks config/presets/<name>.yaml (run, smoke, report) or results/<name>/ (paper).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HOME := $(CURDIR)/.hf_home
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
EXP ?= default
PRESET := $(if $(filter default,$(EXP)),,--configfile config/presets/$(EXP).yaml)

.PHONY: setup run smoke test test-quick test-slurm lint report paper docs clean

setup: $(STAMP)

$(STAMP): envs/requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r envs/requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/snakemake --cores all $(PRESET)

smoke: setup
	$(MAKE) run EXP=smoke

test: setup
	$(BIN)/python -m pytest -q

test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slurm: setup
	.ci/slurm/test.sh

lint: setup
	$(BIN)/snakemake --lint

report: setup
	$(BIN)/snakemake --report results/$(EXP)/report.html $(PRESET)

paper: setup
	$(BIN)/kdbench paper results/$(EXP)

docs: setup
	$(BIN)/kdbench docs

clean:
	rm -rf results/default results/smoke logs benchmarks .snakemake
