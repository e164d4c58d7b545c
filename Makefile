# make run   set up .venv, then run the default benchmark (snakemake --cores all)
# make test  set up .venv (and Chromium, for the report test), then run the test suite (includes the smoke preset end to end)
# make report [EXPERIMENT=smoke]  the Snakemake report of a finished run: results/<experiment>/report.html
# make report-png [EXPERIMENT=smoke]  that report's first screen as results/<experiment>/report.png (headless Chromium)
#   EXPERIMENT is the default experiment or a preset of config/presets/; CONFIG=path.yaml for another config file
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

EXPERIMENT ?= default
CONFIG ?= $(if $(filter default,$(EXPERIMENT)),config/config.yaml,config/presets/$(EXPERIMENT).yaml)
REPORT := results/$(EXPERIMENT)/report.html

.PHONY: setup browser run smoke test test-slurm lint report report-png paper clean

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

# Debian's chromium renders the report in tests/test_report_html.py; without apt that test is skipped
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || (command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "chromium not installed: the report rendering test will be skipped"

test: setup browser
	$(BIN)/python -m pytest -q

test-slurm: setup
	.ci/slurm/test.sh

lint: setup
	$(BIN)/snakemake --lint

report: setup
	$(BIN)/snakemake --configfile $(CONFIG) --report $(REPORT) --report-stylesheet workflow/report/style.css

report-png: report browser
	$(BIN)/python -m kdbench.browser $(REPORT) $(REPORT:.html=.png)

clean:
	rm -rf results/default results/smoke logs benchmarks .snakemake
