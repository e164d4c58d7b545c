# make run   set up .venv, then run the default benchmark (snakemake --cores all)
# make test  set up .venv (and Chromium, for the report test), then run the test suite (includes the smoke preset end to end)
# make test-quick  the tests that need no end-to-end run (under 2 minutes)
# make test-slurm  as root: a one-node SLURM cluster on localhost runs part of the smoke preset
# make gpu-check  on a GPU machine: the smoke preset on the GPU and the real preset's shapes, results/benchmarks/gpu.json
# EXP=<name> picks the experiment: config/presets/<name>.yaml for run, report and report-png (the default
# experiment is config/config.yaml), results/<name>/ for paper (EXP=reference: the committed results).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HOME := $(CURDIR)/.hf_home
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Installed without byte-compiling (pip's compile of every module took 35 of 82 s); each module used is then
# compiled once, on its first import, so bytecode must be written even where the environment turns it off
export PYTHONDONTWRITEBYTECODE :=
EXP ?= default
PRESET := $(if $(filter default,$(EXP)),,--configfile config/presets/$(EXP).yaml)
REPORT := results/$(EXP)/report.html

.PHONY: setup browser run smoke test test-quick test-slurm gpu-check lint report report-png paper docs reference clean

setup: $(STAMP)

$(STAMP): envs/requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -r envs/requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's chromium renders the report in tests/test_report_html.py; without apt that test is skipped
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || (command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "chromium not installed: the report rendering test will be skipped"

# kdbench plan first: Snakemake reports a malformed --configfile without its name or line; the plan names both
run: setup
	$(BIN)/kdbench plan $(PRESET) >/dev/null
	$(BIN)/snakemake --cores all $(PRESET)

smoke: setup
	$(MAKE) run EXP=smoke

test: setup browser
	$(BIN)/python -m pytest -q

test-quick: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slurm: setup
	.ci/slurm/test.sh

# On a GPU machine, about 8 minutes: the smoke preset on the GPU, then the real preset's shapes (random
# weights) cached and online; writes results/benchmarks/gpu.json
gpu-check: setup
	$(BIN)/snakemake --cores all --configfile config/presets/smoke.yaml --config gpus=1 experiment=smoke-gpu
	$(BIN)/python -m kdbench.bench gpu --steps 8 --rounds 3

lint: setup
	$(BIN)/snakemake --lint

report: setup
	$(BIN)/snakemake $(PRESET) --report $(REPORT)

report-png: report browser
	$(BIN)/python -m kdbench.tools.browser $(REPORT) $(REPORT:.html=.png)

paper: setup
	$(BIN)/kdbench paper results/$(EXP)

docs: setup
	$(BIN)/kdbench docs

# results/paper (make run EXP=paper, then make report-png EXP=paper) -> results/reference: every record,
# evaluation, table, figure and analysis, and of each model only its train.json, curve.csv and config;
# weights, caches, token arrays, the corpus and the HTML report stay behind (audit --partial checks the rest);
# then its README.md and the README's results are regenerated
reference:
	rm -rf results/reference && mkdir -p results/reference
	cd results/paper && find . -type f ! -path './.work/*' ! -name '.lock' ! -name '.config.json' \
	  ! -name '*.safetensors' ! -name '*.npy' \
	  ! -name 'tokenizer.json' ! -name 'corpus.jsonl' ! -name 'report.html' -exec cp --parents {} ../reference/ \;
	$(BIN)/kdbench audit results/reference --partial | tail -n 1
	$(BIN)/kdbench docs

clean:
	rm -rf results/default results/smoke logs benchmarks .snakemake
