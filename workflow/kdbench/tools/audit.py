"""Audit a results folder: walk back from every number in summary.csv to the corpus, rehashing everything.

A provenance record only proves something when it is checked against the files and
against the records around it. Starting at `summary.csv`'s record, then every other record in
the folder (analyses, the report's pieces), the audit visits each job's record once (depth
first, inputs before the checks that need them) and checks:

- outputs: every file or folder a record names hashes to what the record says (for a
  folder, the record's per-file hashes name the file that changed);
- links: the hash a record says it consumed equals what the upstream record says it
  produced, so a record edited to match a tampered file still breaks the chain at the
  job that consumed the original; everything inside the results folder needs a record;
- self-descriptions: an eval JSON scored the weights now in the model folder, and eval
  JSONs, cache manifests and train.json files state the settings their record says;
- numbers: every summary.csv value, chance level and item count is recomputed from the
  eval JSONs, and each eval JSON's per-task metric from its per-item records;
- code: all records come from one code version (the committed code paths + hash of uncommitted changes;
  commits that touch only docs or tests do not count).

With `partial`, files that are absent (models and caches left out of a shared folder)
are reported as not shipped; whatever is present must still match.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench import KdbenchError
from kdbench.evaluate import FORMAT as EVAL_FORMAT, model_hashes
from kdbench.io import read_json, sha256_path, tree_hashes
from kdbench.provenance import RECORD_SUFFIX, record_path

SUMMARY = "summary.csv"
CODE = "(code)"  # the pseudo-path that code-version problems are filed under
WORK = ".work"  # resumable job state, never a declared output
# Walked like summary.csv's record: why.md's chain (controls, probes, budget curves), the landing
# page's pieces and paper/, so every record of a finished run is audited.


def short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


@dataclass(frozen=True)
class Record:
    """One job's `.prov.json`."""
    file: Path
    data: dict

    @property
    def rule(self) -> str:
        return self.data.get("rule", "?")

    @property
    def params(self) -> dict:
        return self.data.get("params", {})

    @property
    def wildcards(self) -> dict:
        return self.data.get("wildcards", {})

    @property
    def code(self) -> tuple[str | None, str | None]:
        code = self.data.get("code", {})
        return code.get("commit"), code.get("diff_sha256")

    @property
    def code_key(self) -> tuple[str | None, str | None]:
        """What identifies the code: the hash of its committed code paths (else the commit) and of the diff."""
        code = self.data.get("code", {})
        return code.get("tree") or code.get("commit"), code.get("diff_sha256")

    @property
    def outputs(self) -> dict[str, str]:
        return {p: sha for group in self.data.get("outputs", {}).values() for p, sha in group.items()}

    @property
    def inputs(self) -> list[tuple[str, str]]:
        return [(p, sha) for _, group in sorted(self.data.get("inputs", {}).items()) for p, sha in group.items()]

    def label(self) -> str:
        """'train_student arm=logit seed=0 @ 1a2b3c4+dirty'."""
        wildcards = " ".join(f"{k}={v}" for k, v in self.wildcards.items())
        return " ".join(filter(None, [self.rule, wildcards, "@", code_label(self.code)]))


def code_label(code: tuple[str | None, str | None]) -> str:
    commit, diff = code
    return f"{(commit or 'unknown')[:7]}{f'+dirty:{diff[:8]}' if diff else ''}"


@dataclass
class Artifact:
    """One line of the chain: a file or folder some record names."""
    path: str  # relative to the results folder, or as the record names it when outside
    depth: int  # jobs between it and summary.csv
    sha256: str | None  # now; None when absent
    recorded: str | None  # what its record (or, lacking one, its consumer) says
    produced_by: str | None  # Record.label() of its record
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "BROKEN" if self.problems else "NOT SHIPPED" if self.sha256 is None else "OK"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "status": self.status}


@dataclass
class AuditResult:
    results_dir: str
    partial: bool
    artifacts: list[Artifact]
    problems: list[tuple[str, str]]  # (path, message); the first is the first broken link (see `_Auditor.run`)
    code_versions: dict[str, int]  # code label -> number of records
    numbers_checked: int
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "results_dir": self.results_dir, "partial": self.partial,
                "first_problem": dict(zip(("path", "message"), self.problems[0])) if self.problems else None,
                "problems": [{"path": p, "message": m} for p, m in self.problems],
                "artifacts": [a.to_json() for a in self.artifacts], "code_versions": self.code_versions,
                "numbers_checked": self.numbers_checked, "notes": self.notes}


def audit(results_dir: Path, partial: bool = False, allow_mixed_code: bool = False) -> AuditResult:
    """Audit `results_dir` (a finished run's `results/<experiment>`, or a shared copy of it)."""
    return _Auditor(Path(results_dir), partial, allow_mixed_code).run()


class _Auditor:
    def __init__(self, root: Path, partial: bool, allow_mixed_code: bool):
        if not root.is_dir():
            raise KdbenchError(f"{root}: no such results folder")
        summary = root / SUMMARY
        if not summary.is_file():
            raise KdbenchError(f"{root}: no {SUMMARY}; give a finished run's folder, e.g. results/smoke")
        if not record_path(summary).is_file():
            raise KdbenchError(f"{summary} has no provenance record ({record_path(summary).name}); nothing to trace")
        self.root, self.partial, self.allow_mixed_code = root, partial, allow_mixed_code
        self.problems: list[tuple[int, str, str]] = []  # (rank, path, message); see `problem`
        self.artifacts: dict[str, Artifact] = {}
        self.visited: dict[Path, Record] = {}  # in visiting order
        self.hashes: dict[str, str | None] = {}
        self.broken_links: dict[tuple[str, str, Path], list[str]] = {}  # (path, consumed, producer) -> consumers
        self.records = [self._load(f) for f in sorted(root.rglob(f"*{RECORD_SUFFIX}"))
                        if WORK not in f.relative_to(root).parts]
        self.top = next(r for r in self.records if r.file == record_path(summary))
        # Records name paths relative to Snakemake's working directory ("results/smoke/..."):
        # that prefix maps them into this folder wherever it was copied to.
        named = next((p for p in self.top.outputs if Path(p).name == SUMMARY), None)
        if named is None:
            raise KdbenchError(f"{record_path(summary)} does not name {SUMMARY} among its outputs")
        self.prefix = named[: -len(SUMMARY)]
        resolved = root.resolve().as_posix()
        base = self.prefix.rstrip("/")
        self.workdir = Path(resolved[: -len(base)]) if base and resolved.endswith("/" + base) else None
        self.producer: dict[str, Record] = {}
        for rec in self.records:
            for p in rec.outputs:
                if p in self.producer:
                    self.problem(p, f"named as output by two records: {self.show_file(self.producer[p].file)} "
                                    f"and {self.show_file(rec.file)}")
                self.producer[p] = rec

    def _load(self, file: Path) -> Record:
        try:
            return Record(file, read_json(file))
        except ValueError as e:
            self.problems.append((0, self.show_file(file), f"unreadable record ({e})"))
            return Record(file, {})

    def run(self) -> AuditResult:
        self.visit(self.top, 0)
        for rec in self.records:  # the run's other outputs (analyses, the report's pieces) are audited too
            self.visit(rec, 0)
        for (path, consumed, upstream_file), consumers in self.broken_links.items():
            upstream = self.visited[upstream_file]
            self.problem(path, f"consumed as sha256 {short(consumed)} by {_listing(consumers)}, but "
                               f"{self.show_file(upstream_file)} says {upstream.rule} produced "
                               f"{short(upstream.outputs[path])}: a file or record was replaced, or the jobs "
                               f"come from different runs")
        numbers = self.check_numbers()
        versions = Counter(r.code_key for r in self.visited.values())
        self.check_code(versions)
        labels = {}
        for r in self.visited.values():
            labels.setdefault(r.code_key, code_label(r.code))  # a version is named by its first record's commit
        notes = []
        environments = {repr(sorted(r.data.get("environment", {}).get("packages", {}).items()))
                        for r in self.visited.values()}
        if len(environments) > 1:
            notes.append(f"records list {len(environments)} different sets of package versions")
        sources = _sources(self.visited.values())
        if sources:
            notes.append(f"external sources at their revisions: {', '.join(sources)}")
        # The first broken link: hash and link problems before the content disagreements they cause,
        # then in the chain's order, walking back from summary.csv.
        order = {path: i for i, path in enumerate(self.artifacts)}
        problems = [(path, message) for _, path, message in
                    sorted(self.problems, key=lambda p: (p[0], order.get(p[1], len(order))))]
        return AuditResult(str(self.root), self.partial, list(self.artifacts.values()), problems,
                           {labels[k]: n for k, n in versions.items()}, numbers, notes)

    # --- paths and hashes -------------------------------------------------------------------
    def local(self, path: str) -> Path | None:
        if path.startswith(self.prefix):
            return self.root / path[len(self.prefix):]
        if Path(path).is_absolute():
            return Path(path)
        return self.workdir / path if self.workdir is not None else None

    def show(self, path: str) -> str:
        return path[len(self.prefix):] if path.startswith(self.prefix) else path

    def show_file(self, file: Path) -> str:
        return file.relative_to(self.root).as_posix()

    def current(self, path: str) -> str | None:
        if path not in self.hashes:
            local = self.local(path)
            self.hashes[path] = sha256_path(local) if local is not None and local.exists() else None
        return self.hashes[path]

    def problem(self, path: str, message: str, rank: int = 0) -> None:
        """File a problem under `path`; rank 0: a hash or link, 1: content, 2: code versions."""
        shown = self.show(path)
        self.problems.append((rank, shown, message))
        if shown in self.artifacts:
            self.artifacts[shown].problems.append(message)

    # --- the walk ---------------------------------------------------------------------------
    def visit(self, rec: Record, depth: int) -> None:
        if rec.file in self.visited:
            return
        self.visited[rec.file] = rec
        for path, recorded in rec.outputs.items():
            self.add(path, depth, rec, recorded)
        for path, consumed in rec.inputs:
            upstream = self.producer.get(path)
            if upstream is None:
                self.add(path, depth + 1, None, consumed)
                now = self.current(path)
                if now is not None and now != consumed:
                    self.problem(path, f"sha256 {short(now)}, but {self.show_file(rec.file)} ({rec.rule}) "
                                       f"consumed {short(consumed)}")
                continue
            self.visit(upstream, depth + 1)
            if upstream.outputs[path] != consumed:
                self.broken_links.setdefault((path, consumed, upstream.file), []).append(self.show_file(rec.file))
        self.check_states(rec)
        self.check_evaluated_weights(rec)

    def add(self, path: str, depth: int, rec: Record | None, recorded: str) -> None:
        shown = self.show(path)
        if shown in self.artifacts:
            return
        now = self.current(path)
        if self.partial and now is not None and rec is not None and now != recorded and self.partly_shipped(path, rec):
            now = None  # a folder shipped without its large files: what is there matched file by file
        self.artifacts[shown] = Artifact(shown, depth, now, recorded, rec.label() if rec else None)
        if rec is None and path.startswith(self.prefix):
            self.problem(path, "no record names it as an output (only inputs from outside the folder may lack one)")
        if now is None and not self.partial:
            self.problem(path, f"missing (recorded sha256 {short(recorded)})")
        elif now is not None and rec is not None and now != recorded:
            self.problem(path, f"sha256 {short(now)}, but {self.show_file(rec.file)} says {short(recorded)}"
                               f"{self.differing_files(path, rec)}")

    def partly_shipped(self, path: str, rec: Record) -> bool:
        """A folder whose every present file is one its record lists, with the recorded hash (some absent)."""
        local, listed = self.local(path), rec.data.get("files", {}).get(path)
        if local is None or not local.is_dir() or listed is None:
            return False
        now = tree_hashes(local)
        return set(now) < set(listed) and all(listed[name] == sha for name, sha in now.items())

    def differing_files(self, path: str, rec: Record) -> str:
        """'; differing files: model.safetensors' from the record's per-file hashes, or the cache's own check."""
        local = self.local(path)
        listed = rec.data.get("files", {}).get(path)
        if listed is not None and local is not None and local.is_dir():
            now = tree_hashes(local)
            names = sorted(n for n in set(listed) | set(now) if listed.get(n) != now.get(n))
            tags = [f"{n} ({'added' if n not in listed else 'removed' if n not in now else 'changed'})" for n in names]
            return "; differing files: " + ", ".join(tags)
        if local is not None and (local / "manifest.json").is_file():
            from kdbench.cache.store import TeacherCache

            try:
                TeacherCache(local, verify=True)
            except KdbenchError as e:
                return f"; {e}"
        return ""

    def mismatch(self, path: str, message: str) -> None:
        self.problem(path, message, rank=1)

    # --- checks of content against records ---------------------------------------------------
    def json_of(self, path: Path | None) -> dict | None:
        try:
            return read_json(path) if path is not None and path.is_file() else None
        except ValueError:
            return None  # its hash check already failed

    def check_evaluated_weights(self, rec: Record) -> None:
        """Each evaluation ("eval/<model>/results.json") scored the weights (and tokenizer) that are in its input
        model folder ("<model>") now; a job may evaluate several models (rule evaluate_curve)."""
        inputs = rec.data.get("inputs", {})
        models = {self.show(m): m for m in (*inputs.get("models", {}), *inputs.get("model", {}))}
        for out in rec.outputs:
            model = models.get(self.show(out).removeprefix("eval/").removesuffix("/results.json"))
            if model is not None:
                self.check_scored(model, out)

    def check_scored(self, model: str, out: str) -> None:
        """The evaluation `out` scored the weights (and tokenizer) now in `model`."""
        result = self.json_of(self.local(out))
        if result is None or result.get("format") != EVAL_FORMAT:
            return
        local = self.local(model)
        shipped = self.artifacts.get(self.show(model))
        if local is None or not local.is_dir() or shipped is not None and shipped.sha256 is None:
            return  # absent, or shipped without its weights
        try:
            weights, tokenizer = model_hashes(local)
        except KdbenchError as e:
            self.mismatch(model, str(e))
            return
        if weights != result.get("model_sha256"):
            self.mismatch(model, f"weights hash {short(weights)}, but {self.show(out)} scored "
                                f"{short(result.get('model_sha256'))}")
        if tokenizer != result.get("tokenizer_json_sha256"):
            self.mismatch(model, f"tokenizer.json hash {short(tokenizer)}, but {self.show(out)} used "
                                f"{short(result.get('tokenizer_json_sha256'))}")

    def check_states(self, rec: Record) -> None:
        """Each JSON output says about how it was made what its record says it must (the record's `states`)."""
        for path, stated in rec.data.get("states", {}).items():
            described = self.json_of(self.local(path))
            if described is None:
                continue
            owner = next((o for o in rec.outputs if path == o or path.startswith(o.rstrip("/") + "/")), path)
            for key, said, found in _differences(stated, described):
                self.mismatch(owner, f"{Path(path).name} says {key}={found!r}, its record says {said!r}")

    def check_numbers(self) -> int:
        """Recompute every summary.csv row from the eval JSONs; return how many values were checked."""
        from kdbench.analysis.report import METRICS, model_evals

        summary = self.prefix + SUMMARY
        with open(self.root / SUMMARY, newline="") as f:
            rows = {(r["model"], r["task"], r["metric"]): r for r in csv.DictReader(f)}
        try:
            models = model_evals(self.root, self.top.params.get("models", []))
        except KdbenchError as e:
            self.mismatch(summary, str(e))
            return 0
        checked, seen = 0, set()
        for m in models:
            result = self.json_of(m.eval_path)
            if result is None:
                continue  # absent or unreadable: its own line says so
            source = m.eval_path.relative_to(self.root).as_posix()
            for task, summary_of_task in result["tasks"].items():
                samples = result["samples"].get(task)
                if not samples:
                    self.mismatch(self.prefix + source, f"{task} has no per-item records")
                    continue
                for metric in METRICS:
                    mean = sum(s[metric] for s in samples) / len(samples)
                    if abs(mean - summary_of_task[metric]) > 1e-9 or summary_of_task["n"] != len(samples):
                        self.mismatch(self.prefix + source, f"{task} {metric}={summary_of_task[metric]} (n="
                                     f"{summary_of_task['n']}) but its {len(samples)} items average {mean}")
                    key = (m.model, task, metric)
                    row = rows.get(key)
                    if row is None:
                        self.mismatch(summary, f"no row for {' / '.join(key)}")
                        continue
                    seen.add(key)
                    expected = {"arm": m.arm, "seed": m.seed, "value": summary_of_task[metric],
                                "chance": sum(1 / s["n_choices"] for s in samples) / len(samples),
                                "n": summary_of_task["n"]}
                    for column, value in expected.items():
                        if not _same(value, row[column]):
                            self.mismatch(summary, f"row {' / '.join(key)}: {column} is {row[column]!r}, "
                                                  f"but {source} gives {value!r}")
                    checked += 1
        for key in sorted(set(rows) - seen):
            self.mismatch(summary, f"row {' / '.join(key)} comes from no evaluated model")
        return checked

    def check_code(self, versions: Counter) -> None:
        if len(versions) <= 1 or self.allow_mixed_code:
            return
        main = versions.most_common(1)[0][0]
        main_label = next(code_label(r.code) for r in self.visited.values() if r.code_key == main)
        odd = [f"{self.show_file(r.file)} ({code_label(r.code)})" for r in self.visited.values() if r.code_key != main]
        self.problem(CODE, f"records come from {len(versions)} code versions: {len(self.visited) - len(odd)} at "
                           f"{main_label}, the others {_listing(odd)} (--allow-mixed-code accepts this)", rank=2)


def _sources(records) -> list[str]:
    """'teacher EleutherAI/pythia-410m@<revision>' per imported model or dataset the records name (unpinned: @-)."""
    found = set()
    for rec in records:
        p = rec.params
        named = [("teacher", p.get("source"), p.get("revision")) if rec.rule == "import_teacher" else None,
                 ("data", p["data"].get("source"), p["data"].get("revision")) if "data" in p else None,
                 ("student", p["student"].get("init"), p["student"].get("revision")) if "student" in p else None]
        found |= {f"{what} {source}@{revision or '-'}" for what, source, revision in filter(None, named)
                  if source not in (None, "world", "random", "teacher_layers")}
    return sorted(found)


def _listing(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _differences(declared: Any, described: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, declared, described) for every declared value the artifact states differently.

    Keys the artifact does not state are skipped: it need not describe everything.
    """
    if isinstance(declared, dict) and isinstance(described, dict):
        return [d for k, v in declared.items() if k in described
                for d in _differences(v, described[k], f"{key}.{k}" if key else k)]
    return [] if declared == described else [(key, declared, described)]


def _same(expected: Any, cell: str) -> bool:
    """A CSV cell equals a value to the 6 significant digits summary.csv keeps."""
    if expected is None:
        return cell == ""
    if isinstance(expected, (int, float)):
        try:
            return f"{float(cell):.6g}" == f"{float(expected):.6g}"
        except ValueError:
            return False
    return cell == str(expected)
