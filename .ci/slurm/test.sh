#!/usr/bin/env bash
# make test-slurm: a slice of the smoke preset through a real one-node SLURM cluster on localhost,
# next to a local run of the same slice. check.py then asserts that every job was a SLURM job of the
# run that completed with the GPUs, CPUs, memory and time limit Snakemake asked for, and that both
# runs wrote the same bytes. The slice (every job one distilled student's evaluation depends on)
# covers every rule of the smoke DAG but aggregate: the whole DAG would spend most of its time in
# per-job SLURM overhead (two Snakemake starts per job, status polling).
# Needs root: setup.sh installs and starts munge and slurm; teardown.sh stops them on any exit.
# Never hangs: both runs are under a timeout of LIMIT seconds.
#   .ci/slurm/test.sh          (or: make test-slurm)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "make test-slurm installs and starts system daemons: run it as root" >&2; exit 1; }
export BASE=${BASE:-/tmp/kdbench-slurm}
RUNS=$BASE-runs
LIMIT=${LIMIT:-660}
export HF_HOME=${HF_HOME:-$PWD/.hf_home} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

TARGET=results/smoke/eval/students/logit_hidden/seed0/results.json

.ci/slurm/teardown.sh  # what an interrupted earlier run left behind
rm -rf "$RUNS" && mkdir -p "$RUNS"/{local,slurm}
# On failure the daemons' logs are kept beside the runs' logs.
trap 'status=$?; [ $status = 0 ] || cp -r "$BASE/log" "$RUNS/slurm-daemons" 2>/dev/null; .ci/slurm/teardown.sh' EXIT
.ci/slurm/setup.sh

# The same threads in both runs: CPU training is bit-identical only for equal thread counts.
smk=(.venv/bin/snakemake "$TARGET" --snakefile Snakefile --configfile config/presets/smoke.yaml
     --set-threads train_teacher=2 cache_teacher=2)
# Side by side: the SLURM run mostly waits on submission and polling, the local run fills the gaps.
started=$SECONDS
timeout -k 30 "$LIMIT" "${smk[@]}" --directory "$RUNS/local" --cores 2 >"$RUNS/local.log" 2>&1 &
local_run=$!
timeout -k 30 "$LIMIT" "${smk[@]}" --directory "$RUNS/slurm" --config gpus=1 \
  --workflow-profile profiles/slurm --profile .ci/slurm/profile --slurm-logdir "$RUNS/slurm-logs" \
  >"$RUNS/slurm.log" 2>&1 &
slurm_run=$!

failed=0
for run in local slurm; do
  pid=${run}_run
  if wait "${!pid}"; then
    echo "$run run done after $((SECONDS - started)) s"
  else
    echo "the $run run failed or timed out after ${LIMIT}s; end of $RUNS/$run.log:" >&2
    tail -n 40 "$RUNS/$run.log" >&2
    failed=1
  fi
done
[ "$failed" = 0 ]
.venv/bin/python .ci/slurm/check.py "$RUNS/local" "$RUNS/local.log" "$RUNS/slurm" "$RUNS/slurm.log"
rm -rf "$RUNS"
