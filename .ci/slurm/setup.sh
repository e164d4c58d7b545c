#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for CI: Debian's munge + slurm, no systemd, no accounting
# database. Run as root. Writes its state under $BASE and the daemons' PIDs to $BASE/pids, which
# teardown.sh reads to stop exactly these daemons.
#   BASE=/tmp/kdbench-slurm .ci/slurm/setup.sh
# The node advertises a fake GPU: a job asking for `--gpus=1` on a node without GPUs is refused at
# submission, so without it the GPU rules' submission could not be tested.
set -euo pipefail
BASE=${BASE:?set BASE to a state directory}
export DEBIAN_FRONTEND=noninteractive
if [ -f /etc/slurm/slurm.conf ] && ! grep -q '^ClusterName=kdbench-ci$' /etc/slurm/slurm.conf; then
  echo "/etc/slurm/slurm.conf belongs to another cluster; not overwriting it" >&2
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
fi

mkdir -p "$BASE"/{ctld,spool,log,run}
chown slurm:slurm "$BASE"/{ctld,spool,log,run}
: > "$BASE/pids"

# munge authenticates every SLURM message; the package created /etc/munge/munge.key.
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  echo "munged $(cat /run/munge/munged.pid)" >> "$BASE/pids"
fi
munge -n | unmunge >/dev/null

# Clients look for the config at the default path: the job step drops SLURM_CONF before its srun.
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=kdbench-ci
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$BASE/ctld
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
# No cgroups in a container without systemd: track processes by /proc, bind tasks by affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# squeue lists a finished job for MinJobAge seconds: the workflow polls with squeue, the test reads
# every job's record afterwards.
MinJobAge=3600
SchedulerParameters=sched_interval=1  # start queued jobs within a second, not a minute
# The node claims the size of a GPU server, so profiles/slurm's requests are accepted unchanged;
# config_overrides stops slurmd from draining it for having less. Jobs still run on the real CPUs.
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=16 RealMemory=131072 Gres=gpu:1 State=UNKNOWN
PartitionName=ci Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
echo 'NodeName=localhost Name=gpu File=/dev/null' > /etc/slurm/gres.conf  # a GPU without a device file is dropped

slurmctld
slurmd -N localhost  # -N: the node name, whatever the machine's hostname
for _ in $(seq 120); do
  sinfo -h -o %T 2>/dev/null | grep -qx idle && break
  sleep 0.5
done
for daemon in slurmctld slurmd; do
  echo "$daemon $(cat "$BASE/run/$daemon.pid")" >> "$BASE/pids"
done
sinfo -h -o %T | grep -qx idle || { echo "slurm node did not become idle" >&2; sinfo >&2; exit 1; }
sinfo -o '%P %D %T %c %m %G'
