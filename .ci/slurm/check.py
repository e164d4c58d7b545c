"""Check a SLURM run of the workflow against a local run of the same targets (used by .ci/slurm/test.sh).

    python .ci/slurm/check.py LOCAL_DIR LOCAL_LOG SLURM_DIR SLURM_LOG

1. Every job of the local run, except the SLURM run's local rules, was a SLURM job of the SLURM run
   and completed. SLURM's own records (squeue, kept for MinJobAge) are matched to Snakemake's jobs by
   the comment the executor plugin gives each job: `rule_<rule>[_wildcards_<values>]`.
2. SLURM granted each job what Snakemake asked for: GPUs, CPUs, memory and time limit; every rule
   of the run that profiles/slurm sizes for GPUs asked for a GPU.
3. Both runs wrote the same bytes, except files that hold timings or absolute paths.
Exit status 0 when all hold; otherwise each failed check is printed.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# Differ between two identical runs: timings (train.json, curve.csv, provenance records), absolute
# paths (the rendered task YAMLs), PDF creation dates, the run's lock (PID, command line) and its config
# stamp (the SLURM run's gpus).
VARYING = ("*.prov.json", "train.json", "curve.csv", "*.pdf", ".snakemake_timestamp", "eval/tasks/*", ".lock",
           ".config.json")
FIELDS = ("JobID", "State", "tres-per-job", "NumCPUs", "MinMemory", "TimeLimit", "Comment")


def jobs_in_log(log: str) -> list[dict]:
    """The jobs a Snakemake log announces: rule, whether run locally, wildcard values, threads, resources."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", log):
        head = re.match(r"(local)?rule (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block.split("\n\n")[0], flags=re.M))
        wildcards = [kv.split("=", 1)[1] for kv in fields["wildcards"].split(", ")] if "wildcards" in fields else []
        resources = dict(kv.split("=", 1) for kv in fields.get("resources", "").split(", ") if "=" in kv)
        jobs.append({"rule": head[2], "local": bool(head[1]), "wildcards": wildcards,
                     "threads": int(fields.get("threads", 1)), "resources": resources})
    return jobs


def comment(job: dict) -> str:
    """The comment snakemake-executor-plugin-slurm gives the sbatch job of `job`."""
    values = "_".join(job["wildcards"]).replace("/", "_")
    return f"rule_{job['rule']}_wildcards_{values}" if values else f"rule_{job['rule']}"


def slurm_jobs(run_id: str) -> dict[str, list[dict]]:
    """SLURM's records of the run's jobs (a retried job has several), by comment."""
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={run_id}",
                          "--Format=" + ",".join(f"{f}: " for f in FIELDS)],
                         capture_output=True, text=True, check=True).stdout
    records: dict[str, list[dict]] = {}
    for line in out.splitlines():
        record = dict(zip(FIELDS, line.split()))
        records.setdefault(record["Comment"], []).append(record)
    return records


def megabytes(memory: str) -> float:
    return float(memory[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[memory[-1]]


def minutes(limit: str) -> int:
    days, _, clock = limit.rpartition("-")
    h, m, s = ([0, 0] + [int(x) for x in clock.split(":")])[-3:]
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def granted_as_asked(job: dict, record: dict) -> list[str]:
    """What SLURM granted `record` that differs from what Snakemake asked for `job`."""
    res = job["resources"]
    gpus = int(res.get("gpu", 0))
    asked = {"tres-per-job": f"gres:gpu:{gpus}" if gpus else "N/A",
             "NumCPUs": gpus * int(res["cpus_per_gpu"]) if gpus and "cpus_per_gpu" in res else job["threads"],
             "MinMemory": float(res["mem_mb"]), "TimeLimit": int(res["runtime"])}
    got = {"tres-per-job": record["tres-per-job"], "NumCPUs": int(record["NumCPUs"]),
           "MinMemory": megabytes(record["MinMemory"]), "TimeLimit": minutes(record["TimeLimit"])}
    return [f"{comment(job)}: SLURM job {record['JobID']} got {k} {got[k]}, asked {v}"
            for k, v in asked.items() if got[k] != v]


def digests(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    kept = (p for p in files if not any(p.relative_to(root).match(g) for g in VARYING))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in kept}


def main(local_dir: Path, local_log: Path, slurm_dir: Path, slurm_log: Path) -> list[str]:
    log = slurm_log.read_text()
    announced = jobs_in_log(log)
    local_rules = {j["rule"] for j in announced if j["local"]}
    submitted = [j for j in announced if not j["local"]]
    records = slurm_jobs(re.search(r"SLURM run ID: (\S+)", log)[1])

    errors = []
    expected = Counter(comment(j) for j in jobs_in_log(local_log.read_text()) if j["rule"] not in local_rules)
    got = Counter(comment(j) for j in submitted)
    if expected != got:
        errors.append(f"jobs of the local run only: {sorted(expected - got)}; of the SLURM run only: {sorted(got - expected)}")
    missing = sorted(set(expected) - set(records))
    if missing:
        errors.append(f"{len(missing)} jobs never went through sbatch: {missing}")
    failed = [f"{c} (job {r['JobID']}: {r['State']})" for c, rs in records.items() for r in rs if r["State"] != "COMPLETED"]
    if failed:
        errors.append(f"SLURM jobs that did not complete: {failed}")
    for job in submitted:
        for record in records.get(comment(job), []):
            errors.extend(granted_as_asked(job, record))
    gpu_rules = {j["rule"] for j in submitted if int(j["resources"].get("gpu", 0))}
    sized = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]
    unasked = set(sized) & {j["rule"] for j in submitted} - gpu_rules
    if unasked:
        errors.append(f"rules sized for GPUs in profiles/slurm that asked for none: {sorted(unasked)}")

    ours, theirs = digests(local_dir / "results"), digests(slurm_dir / "results")
    differ = sorted(f for f in ours.keys() | theirs.keys() if ours.get(f) != theirs.get(f))
    if differ:
        errors.append(f"{len(differ)} of {len(ours)} result files differ from the local run's: {differ[:20]}")

    print(f"{sum(map(len, records.values()))} SLURM jobs for {sum(expected.values())} jobs "
          f"(run on the submitting host: {', '.join(sorted(local_rules)) or 'none'}); GPU jobs: "
          f"{', '.join(sorted(gpu_rules))}; identical result files: {len(ours) - len(differ)} of {len(ours)}")
    return errors


if __name__ == "__main__":
    problems = main(*map(Path, sys.argv[1:5]))
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)
