"""The `kdbench` command: checks a user runs on results they were given or are about to share.

    kdbench audit RESULTS_DIR [--json] [--partial] [--allow-mixed-code]
    kdbench verify-cache CACHE_DIR
    kdbench paper RESULTS_DIR
    kdbench docs [--check]
    kdbench power RESULTS_DIR --mde POINTS [--reference ARM] [--candidate ARM] [--metric acc]
    kdbench plan [--configfile FILE ...] [--tflops 400]

Exit status: 0 when the check passes, 1 when it finds a problem, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from kdbench import KdbenchError

if TYPE_CHECKING:
    from kdbench.tools.audit import AuditResult


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except KdbenchError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdbench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    audit = commands.add_parser(
        "audit", help="trace every number in summary.csv back to its inputs, rehashing everything",
        description="Walk back from summary.csv through every provenance record to the corpus, rehash every "
                    "file and check that records, files, eval JSONs and summary.csv agree.")
    audit.add_argument("results_dir", type=Path, metavar="RESULTS_DIR", help="e.g. results/smoke")
    audit.add_argument("--json", action="store_true", help="print the result as JSON")
    audit.add_argument("--partial", action="store_true",
                       help="a shared folder without the large artifacts: absent files are reported as not shipped")
    audit.add_argument("--allow-mixed-code", action="store_true",
                       help="accept records written by different code versions")
    audit.set_defaults(run=_audit)
    verify = commands.add_parser("verify-cache", help="check every teacher cache file against manifest.json",
                                 description="Rehash every shard file of a teacher cache; compare with its manifest.")
    verify.add_argument("cache_dir", type=Path, metavar="CACHE_DIR", help="e.g. results/smoke/cache")
    verify.set_defaults(run=_verify_cache)
    paper = commands.add_parser(
        "paper", help="regenerate every table and figure of a finished run into RESULTS_DIR/paper/",
        description="Recompute the statistics, tables and figures from the evaluation JSONs of a finished run "
                    "(no models needed), with the models and statistics settings its summary.csv record names.")
    paper.add_argument("results_dir", type=Path, metavar="RESULTS_DIR", help="e.g. results/reference")
    paper.set_defaults(run=_paper)
    docs = commands.add_parser(
        "docs", help="regenerate docs/config.md, docs/plan.md, the README's results and results/reference/README.md",
        description="Write docs/config.md from the config schema, docs/plan.md from the planner, and the README's "
                    "results and results/reference/README.md from results/reference/; with --check, only report "
                    "which of them are out of date.")
    docs.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    docs.set_defaults(run=_docs)
    power = commands.add_parser(
        "power", help="seeds and items the headline comparison needs for a target minimal detectable difference",
        description="Estimate the variance components of candidate minus reference (overall) from a results "
                    "folder's evaluations and tabulate the MDE for other seed and item counts.")
    power.add_argument("results_dir", type=Path, metavar="RESULTS_DIR", help="e.g. results/reference")
    power.add_argument("--mde", type=float, required=True, help="target MDE in points, e.g. 1.0")
    power.add_argument("--reference", default=None, help="reference arm (default: the run's stats.reference_arm)")
    power.add_argument("--candidate", default=None, help="candidate arm (default: the run's stats.candidate_arm)")
    power.add_argument("--metric", default=None, choices=("acc", "acc_norm"), help="default: the run's stats.metric")
    power.set_defaults(run=_power)
    planner = commands.add_parser(
        "plan", help="cache bytes, FLOPs and GPU-hours of an experiment, from model configs alone",
        description="Read config/config.yaml and the given config files as the workflow does (later files win), "
                    "describe the models from their config.json (no weights) and print the teacher cache's bytes "
                    "per token and disk per component, FLOPs per arm and GPU-hours, cached and online.")
    planner.add_argument("--configfile", nargs="+", type=Path, default=[], metavar="FILE",
                         help="e.g. config/presets/pythia.yaml")
    planner.add_argument("--tflops", type=float, default=None,
                         help="effective TFLOPS per GPU (default 400: bf16 on an H100 SXM at 40%% MFU)")
    planner.set_defaults(run=_plan)
    return parser


def _plan(args: argparse.Namespace) -> int:
    from kdbench.schema.plan import DEFAULT_TFLOPS
    from kdbench.tools.docs import plan_text

    print(plan_text(Path(__file__).resolve().parents[2], args.configfile, args.tflops or DEFAULT_TFLOPS))
    return 0


def _power(args: argparse.Namespace) -> int:
    from kdbench.schema.config import StatsConfig, build
    from kdbench.analysis.power import headline_components, plan

    given = {"reference_arm": args.reference, "candidate_arm": args.candidate, "metric": args.metric}
    cfg = build(StatsConfig, {**_recorded(args.results_dir)["stats"], **{k: v for k, v in given.items() if v}}, "stats")
    components, n_seeds = headline_components(args.results_dir, cfg)
    print(plan(components, n_seeds, args.mde, cfg))
    return 0


def _recorded(results_dir: Path) -> dict:
    """The params of a finished run's aggregate job (its models and statistics settings), from its record."""
    from kdbench.io import read_json
    from kdbench.provenance import record_path

    record = record_path(results_dir / "summary.csv")
    if not record.is_file():
        raise KdbenchError(f"{results_dir}: no summary.csv record ({record.name}); give a finished run's folder")
    return read_json(record)["params"]


def _audit(args: argparse.Namespace) -> int:
    from kdbench.tools.audit import audit

    result = audit(args.results_dir, partial=args.partial, allow_mixed_code=args.allow_mixed_code)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_result(result))
    return 0 if result.ok else 1


def format_result(result: AuditResult) -> str:
    """The audit as text: one line per artifact, then the numbers, the code versions and the verdict.

    An artifact's line holds its status, short hash, path (indented by its distance from
    summary.csv) and the job that produced it; its problems follow on lines marked `!`.
    """
    from kdbench.tools.audit import short

    width = max(len("  " * a.depth + a.path) for a in result.artifacts)
    lines = [f"audit of {result.results_dir} ({'partial: absent files allowed' if result.partial else 'full'})"]
    for a in result.artifacts:
        made = f"by {a.produced_by}" if a.produced_by else "no record"
        if a.status == "NOT SHIPPED":
            made += f"; not shipped (recorded sha256 {short(a.recorded)})"
        lines.append(f"{a.status:<11}  {short(a.sha256):<12}  {('  ' * a.depth + a.path).ljust(width)}  {made}")
        lines += [f"{'':<27}! {m}" for m in a.problems]
    lines.append(f"numbers: {result.numbers_checked} summary.csv values recomputed from the eval JSONs")
    lines.append("code: " + ", ".join(f"{n} records at {c}" for c, n in result.code_versions.items()))
    shown = {a.path for a in result.artifacts}
    lines += [f"! {path}: {message}" for path, message in result.problems if path not in shown]
    lines += [f"note: {n}" for n in result.notes]
    absent = sum(a.status == "NOT SHIPPED" for a in result.artifacts)
    if result.ok:
        lines.append(f"PASS: {len(result.artifacts)} artifacts; every number in summary.csv traces to hashed inputs"
                     + (f" ({absent} not shipped: checked through their records only)" if absent else ""))
    else:
        path, message = result.problems[0]
        more = f" ({len(result.problems)} problems in all)" if len(result.problems) > 1 else ""
        lines.append(f"FAIL: first broken link: {path}: {message}{more}")
    return "\n".join(lines)


def _paper(args: argparse.Namespace) -> int:
    from kdbench.analysis.explain import paper
    from kdbench.schema.arms import ArmConfig
    from kdbench.schema.config import AnalysisConfig, StatsConfig, build
    from kdbench.io import read_json
    from kdbench.provenance import record_path

    params = _recorded(args.results_dir)
    why = record_path(args.results_dir / "analysis" / "why.md")
    analyzed = read_json(why)["params"] if why.is_file() else None
    out = args.results_dir / "paper"
    paper(args.results_dir, out, build(StatsConfig, params["stats"], "stats"), params["models"], params.get("budgets", {}),
          build(AnalysisConfig, analyzed["analysis"], "analysis") if analyzed else None,
          {n: build(ArmConfig, a, f"arms.{n}") for n, a in analyzed["arms"].items()} if analyzed else None,
          analyzed["controls"] if analyzed else None)
    print(f"wrote the tables, headline and figures of {args.results_dir} into {out}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from kdbench.tools.docs import regenerate

    stale = regenerate(Path(__file__).resolve().parents[2], check=args.check)
    for path in stale:
        print(f"{'out of date' if args.check else 'rewrote'}: {path}")
    return 1 if args.check and stale else 0


def _verify_cache(args: argparse.Namespace) -> int:
    if not args.cache_dir.is_dir():
        raise KdbenchError(f"{args.cache_dir}: no such cache directory")
    from kdbench.cache.store import TeacherCache

    try:
        cache = TeacherCache(args.cache_dir, verify=True)
    except KdbenchError as e:
        print(f"BROKEN: {e}")
        return 1
    shards = cache.manifest["shards"]
    print(f"OK: {args.cache_dir}: {sum(len(s['files']) for s in shards)} files in {len(shards)} shards match "
          f"manifest.json; {cache.n_seqs} sequences x {cache.seq_len} tokens of {', '.join(cache.components)}; "
          f"teacher {cache.manifest.get('teacher_sha256', '')[:12]}")
    return 0


if __name__ == "__main__":  # python -m kdbench.cli, as the console script
    sys.exit(main())
