#!/usr/bin/env bash
# Stop the daemons setup.sh started (by the PIDs it recorded in $BASE/pids) and remove its state.
#   BASE=/tmp/kdbench-slurm .ci/slurm/teardown.sh
set -uo pipefail
BASE=${BASE:?set BASE to the state directory given to setup.sh}
[ -f "$BASE/pids" ] || exit 0
scancel --user="$(id -un)" 2>/dev/null  # jobs left by an interrupted run
tac "$BASE/pids" | while read -r name pid; do  # slurmd, slurmctld, then munged
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  echo "stopped $name ($pid)"
done
grep -qs '^ClusterName=kdbench-ci$' /etc/slurm/slurm.conf && rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
rm -rf "$BASE"
