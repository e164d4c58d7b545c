"""kdbench audit / verify-cache: a fresh smoke run passes; tampering is caught and named.

The session's smoke run (tests/conftest.py); each tampering case works on its own
copy: a flipped byte in a student checkpoint, an edited eval JSON, a cache shard swapped for one
of another cache, a record edited to match a tampered file, an edited number in summary.csv, and
records from two code versions. `--partial` accepts a shared folder without models and cache;
`--json` parses; the console script runs. The provenance records' new fields are checked without
the smoke run.

    .venv/bin/python -m pytest tests/test_audit.py -v
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from kdbench import KdbenchError
from kdbench.tools.audit import audit
from kdbench.io import read_json, sha256_file, sha256_path, tree_hashes, write_json
from conftest import SmokeRun, flip_byte
from kdbench.provenance import job_seed, write_record

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = REPO / "config" / "presets" / "smoke.yaml"
STUDENT = "students/logit/seed0"
STUDENT_EVAL = "eval/students/logit/seed0/results.json"


def kdbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kdbench"), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke(smoke_run) -> SmokeRun:
    """The session's smoke run; the cases below tamper with copies of it."""
    return smoke_run


def copy_run(smoke_run: Path, to: Path) -> Path:
    """A copy of the run with every record at the summary's code version: the cases below are about
    files, and a working tree edited during the smoke run would otherwise add a code-version problem."""
    shutil.copytree(smoke_run, to, ignore=shutil.ignore_patterns(".work"))
    code = read_json(to / "summary.csv.prov.json")["code"]
    for record_file in to.rglob("*.prov.json"):
        write_json(record_file, {**read_json(record_file), "code": code})
    return to


@pytest.fixture
def run_copy(smoke, tmp_path) -> Path:
    return copy_run(smoke.results, tmp_path / "results" / "smoke")


def first_problem(results: Path, **kwargs) -> tuple[str, str]:
    result = audit(results, **kwargs)
    assert not result.ok
    return result.problems[0]


def rehash_record(results: Path, artifact: str) -> None:
    """Rewrite an artifact's record so that it matches the artifact as it is now."""
    record_file = results / f"{artifact}.prov.json"
    record = read_json(record_file)
    for group in record["outputs"].values():
        for name in group:
            if name.endswith(artifact):
                group[name] = sha256_path(results / artifact)
                if (results / artifact).is_dir():
                    record["files"][name] = tree_hashes(results / artifact)
    write_json(record_file, record)


@pytest.mark.slow
def test_fresh_run_passes_walking_every_artifact(smoke):
    smoke_run = smoke.results
    result = audit(smoke_run, allow_mixed_code=smoke.code_changed)
    assert result.ok, result.problems
    assert all(a.status == "OK" for a in result.artifacts)
    paths = {a.path for a in result.artifacts}
    assert {"summary.csv", "table.md", STUDENT_EVAL, STUDENT, "students/init/seed1", "teacher", "cache",
            "data/train.npy", "tokenizer", "world/corpus.jsonl", "world/tasks", "eval/tasks"} <= paths
    with open(smoke_run / "summary.csv") as f:
        assert result.numbers_checked == sum(1 for _ in csv.DictReader(f))
    assert (len(result.code_versions) == 1 or smoke.code_changed) and not result.notes
    record = read_json(smoke_run / f"{STUDENT}.prov.json")
    assert record["seed"] == 0 and record["environment"]["torch"]
    assert "model.safetensors" in next(iter(record["files"].values()))
    assert read_json(smoke_run / "world" / "corpus.jsonl.prov.json")["seed"] == 7


@pytest.mark.slow
def test_tuned_arms_are_audited_by_what_their_records_state(smoke):
    """The smoke preset tunes every teacher arm: train.json holds the chosen trial, and so does its record."""
    tuned = sorted((smoke.results / "tuning").glob("*/tuning.json"))
    assert tuned, "the smoke preset runs with tuning on"
    for path in tuned:
        arm, record = path.parent.name, read_json(path)
        prov = read_json(smoke.results / "students" / arm / "seed0.prov.json")
        stated = next(v for k, v in prov["states"].items() if k.endswith("train.json"))
        assert stated["arm_config"] == record["chosen"] and stated["config"]["lr"] == record["lr"]
        assert read_json(smoke.results / "students" / arm / "seed0" / "train.json")["arm_config"] == record["chosen"]


@pytest.mark.slow
def test_train_json_disagreeing_with_its_record_is_named(run_copy):
    path = run_copy / STUDENT / "train.json"
    described = read_json(path)
    described["config"]["lr"] *= 2
    write_json(path, described)
    rehash_record(run_copy, STUDENT)  # even with the folder's hash made to match, the statement disagrees
    problems = audit(run_copy).problems
    assert any(p == STUDENT and "train.json says config.lr=" in m for p, m in problems), problems


@pytest.mark.slow
def test_flipped_byte_in_student_checkpoint_is_named(run_copy):
    flip_byte(run_copy / STUDENT / "model.safetensors", -7)  # in the tensor data
    path, message = first_problem(run_copy)
    assert path == STUDENT and "model.safetensors (changed)" in message
    problems = audit(run_copy).problems
    assert any(p == STUDENT and f"but {STUDENT_EVAL} scored" in m for p, m in problems)


@pytest.mark.slow
def test_edited_eval_json_is_named(run_copy):
    path = run_copy / STUDENT_EVAL
    result = read_json(path)
    task = sorted(result["tasks"])[0]
    result["tasks"][task]["acc"] = round(1.0 - result["tasks"][task]["acc"], 4)
    write_json(path, result)
    assert first_problem(run_copy)[0] == STUDENT_EVAL
    rehash_record(run_copy, STUDENT_EVAL)  # even with its record made to match, the numbers disagree
    problems = audit(run_copy).problems
    assert problems[0][0] == STUDENT_EVAL and "by summary.csv.prov.json" in problems[0][1]
    assert any(p == "summary.csv" and f"{STUDENT} / {task} / acc: value" in m for p, m in problems)
    assert any(p == STUDENT_EVAL and "items average" in m for p, m in problems)


@pytest.mark.slow
def test_edited_number_in_summary_is_recomputed_from_the_eval_jsons(run_copy):
    summary = run_copy / "summary.csv"
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[3]["value"] = "0.987"
    with open(summary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rehash_record(run_copy, "summary.csv")
    path, message = first_problem(run_copy)
    assert path == "summary.csv" and "value is '0.987'" in message


@pytest.mark.slow
def test_swapped_cache_shard_is_named(run_copy, tmp_path):
    from kdbench.schema.config import CacheConfig
    from kdbench.schema.arms import Capture
    from kdbench.cache.capture import write_teacher_cache
    from kdbench.models.causal_lm import load_model

    manifest = read_json(run_copy / "cache" / "manifest.json")
    settings = manifest["settings"]
    shard = np.load(run_copy / "cache" / "00001.input_ids.npy")
    other_tokens = np.random.default_rng(1).integers(0, manifest["vocab_size"], size=shard.shape).astype(shard.dtype)
    build = lambda cls: cls(**{f.name: settings[f.name] for f in dataclasses.fields(cls) if f.name in settings})
    write_teacher_cache(load_model(run_copy / "teacher"), other_tokens, {"tokens_sha256": "other"}, build(CacheConfig),
                Capture.from_settings(settings), tmp_path / "other", tmp_path / "other-work")
    for f in (tmp_path / "other").glob("00000.*.npy"):
        shutil.copyfile(f, run_copy / "cache" / f.name.replace("00000", "00001"))
    path, message = first_problem(run_copy)
    assert path == "cache" and "00001.hidden.npy (changed)" in message
    verify = kdbench("verify-cache", str(run_copy / "cache"))
    assert verify.returncode == 1 and "cache shard 00001" in verify.stdout


@pytest.mark.slow
def test_record_edited_to_match_a_tampered_file_breaks_the_downstream_link(run_copy):
    flip_byte(run_copy / STUDENT / "model.safetensors", -7)  # in the tensor data
    rehash_record(run_copy, STUDENT)
    path, message = first_problem(run_copy)
    assert path == STUDENT and f"by {STUDENT_EVAL}.prov.json" in message and "produced" in message
    student = next(a for a in audit(run_copy).artifacts if a.path == STUDENT)
    assert student.sha256 == student.recorded  # the record alone looks fine


@pytest.mark.slow
def test_mixed_code_versions_fail_unless_allowed(run_copy):
    record = read_json(run_copy / "teacher.prov.json")
    record["code"] = {"commit": "0" * 40, "dirty": False, "diff_sha256": None}
    write_json(run_copy / "teacher.prov.json", record)
    path, message = first_problem(run_copy)
    assert path == "(code)" and "teacher.prov.json (0000000)" in message
    assert audit(run_copy, allow_mixed_code=True).ok


@pytest.mark.slow
def test_partial_folder_reports_absent_artifacts_as_not_shipped(smoke, tmp_path):
    shared = copy_run(smoke.results, tmp_path / "reference")
    absent = ["cache", "teacher", *(p.relative_to(shared).as_posix() for p in (shared / "students").glob("*/seed*")
                                    if p.is_dir())]
    for name in absent:
        shutil.rmtree(shared / name)
    result = audit(shared, partial=True)
    assert result.ok, result.problems
    assert {a.path for a in result.artifacts if a.status == "NOT SHIPPED"} == set(absent)
    out = kdbench("audit", "--partial", str(shared))
    assert out.returncode == 0, out.stdout
    assert re.search(r"\nNOT SHIPPED +- +cache +by cache_teacher @ .*; not shipped \(recorded sha256 [0-9a-f]{12}\)\n",
                     out.stdout)
    assert "missing" in first_problem(shared)[1]  # without --partial
    flip_byte(shared / "eval" / "teacher" / "results.json", -7)  # whatever is shipped must still match
    assert first_problem(shared, partial=True)[0] == "eval/teacher/results.json"


@pytest.mark.slow
def test_partial_folder_may_ship_a_model_folder_without_its_weights(smoke, tmp_path):
    """results/reference keeps each student's train.json and curve.csv: the files there must match their record."""
    shared = copy_run(smoke.results, tmp_path / "reference")
    (shared / STUDENT / "model.safetensors").unlink()
    result = audit(shared, partial=True)
    assert result.ok, result.problems
    assert next(a for a in result.artifacts if a.path == STUDENT).status == "NOT SHIPPED"
    described = read_json(shared / STUDENT / "train.json")
    described["steps"] += 1
    write_json(shared / STUDENT / "train.json", described)
    assert first_problem(shared, partial=True)[0] == STUDENT


@pytest.mark.slow
def test_console_script_text_json_and_exit_codes(run_copy):
    out = kdbench("audit", str(run_copy))
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(rf"\nOK +[0-9a-f]{{12}} +{STUDENT} +by train_curve arm=logit seed=0 @ [0-9a-f]{{7}}", out.stdout)
    assert out.stdout.splitlines()[-1].startswith("PASS: ")
    parsed = json.loads(kdbench("audit", "--json", str(run_copy)).stdout)
    assert parsed["ok"] and parsed["first_problem"] is None and len(parsed["artifacts"]) > 30
    flip_byte(run_copy / STUDENT / "model.safetensors", -7)  # in the tensor data
    out = kdbench("audit", str(run_copy))
    assert out.returncode == 1 and f"FAIL: first broken link: {STUDENT}: " in out.stdout
    parsed = json.loads(kdbench("audit", "--json", str(run_copy)).stdout)
    assert not parsed["ok"] and parsed["first_problem"]["path"] == STUDENT
    assert kdbench("verify-cache", str(run_copy / "cache")).returncode == 0


def test_usage_errors_are_one_line(tmp_path):
    with pytest.raises(KdbenchError, match="no summary.csv"):
        audit(tmp_path)
    (tmp_path / "summary.csv").write_text("model\n")
    with pytest.raises(KdbenchError, match="no provenance record"):
        audit(tmp_path)
    out = kdbench("audit", str(tmp_path / "absent"))
    assert out.returncode == 2
    assert out.stderr.strip() == f"kdbench: error: {tmp_path / 'absent'}: no such results folder"
    assert kdbench("verify-cache", str(tmp_path)).returncode == 1  # no manifest.json: not a cache


def test_record_holds_seed_torch_version_and_per_file_hashes(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    (out / ".snakemake_timestamp").touch()
    path = write_record({"0": [out]}, rule="train_student", params={"train": {}}, wildcards={"arm": "a", "seed": "3"},
                        inputs={}, started=datetime.now(timezone.utc))
    record = read_json(path)
    assert record["seed"] == 3 and record["environment"]["torch"]
    assert record["files"] == {str(out): {"model.safetensors": sha256_file(out / "model.safetensors")}}
    assert record["outputs"]["0"][str(out)] == sha256_path(out)
    assert job_seed({}, {"teacher": {"arch": {"n_layer": 2}, "seed": 5}}) == 5
    assert job_seed({}, {"evaluation": {"limit": 20}}) is None


def test_an_input_hash_comes_from_its_producers_record_until_a_file_changes(tmp_path, monkeypatch):
    import kdbench.provenance as provenance

    cache, weights = tmp_path / "cache", tmp_path / "weights.bin"
    (cache / "sub").mkdir(parents=True)
    (cache / "a-b.npy").write_bytes(b"x" * 100)
    (cache / "sub" / "a.npy").write_bytes(b"y" * 100)  # "a-b" sorts after "a" by path parts, before it as a string
    weights.write_bytes(b"w")
    for f in (cache / "a-b.npy", cache / "sub" / "a.npy", weights):  # written well before the records (a coarse
        os.utime(f, ns=(time.time_ns() - 10**9,) * 2)              # clock may stamp both in one tick)
    for output in (cache, weights):  # a record sits beside its job's first output
        write_record({"0": [output]}, rule="made", params={}, wildcards={}, inputs={}, started=datetime.now(timezone.utc))
    truth = {str(cache): sha256_path(cache), str(weights): sha256_file(weights)}

    def consumed() -> dict:
        return provenance.input_hashes({"cache": [cache], "weights": [weights]})

    reads = []
    monkeypatch.setattr(provenance, "sha256_path", lambda p: reads.append(p) or sha256_path(p))
    assert consumed() == {"cache": {str(cache): truth[str(cache)]}, "weights": {str(weights): truth[str(weights)]}}
    assert reads == []  # neither input was read again
    (cache / "sub" / "a.npy").write_bytes(b"z" * 100)  # changed after the record: hashed again, the new content
    (cache / "extra.npy").write_bytes(b"e")  # a file the record does not list
    weights.write_bytes(b"v")
    now = consumed()
    assert now["cache"][str(cache)] == sha256_path(cache) != truth[str(cache)]
    assert now["weights"][str(weights)] == sha256_file(weights) != truth[str(weights)]
    assert reads == [cache, weights]
