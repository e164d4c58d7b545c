"""Bad inputs and faults, one row each: each fails before any job in one line naming the key or file and what
to do, or recovers by itself (docs/faults.md is the table users read).

    .venv/bin/python -m pytest tests/test_bad_inputs.py -q   (about 30 s: direct calls, three dry runs)
"""
from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdbench import KdbenchError
from kdbench.schema.checks import check_paths, read_config_file
from kdbench.schema.claim import claim, lost_outputs, stamp_config
from kdbench.schema.experiment import load_experiment
from kdbench.schema.plan import teacher_mode

from conftest import REPO, SMOKE, snakemake

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def config(**changes) -> dict:
    """The default config with dotted keys set ("stats.ci": 1.5)."""
    cfg = json.loads(json.dumps(DEFAULT))
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = cfg
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


# (dotted key -> value, the start of the one-line error); every row is refused when the config is built
CONFIG_CASES = [
    ({"arms.logit.terms": {"ce": 0, "fkl": 0}}, r"arms\.logit\.terms: every weight is 0, so the arm would not train"),
    ({"analysis.budgets": [100]}, r"analysis\.budgets\[0\]: 100 tokens is less than one batch \(1,024 = "
                                  r"student\.train\.batch_size 16 x data\.seq_len 64\)"),
    ({"analysis.budgets": [10000, 10100]}, r"analysis\.budgets: \[10000, 10100\] train \[9216, 9216\] tokens"),
    ({"student.train.tokens": 1000}, r"student\.train\.tokens: 1,000 tokens is less than one batch"),
    ({"stats.ci": 1.5}, r"stats\.ci: 1\.5 must be a probability strictly between 0 and 1"),
    ({"stats.power": 0}, r"stats\.power: 0\.0 must be a probability"),
    ({"stats.candidate_arm": "logit"}, r"stats\.candidate_arm: 'logit' is also the reference_arm"),
    ({"student.arch.d_model": 129}, r"student\.arch\.n_head: 2 heads do not divide student\.arch\.d_model 129"),
    ({"teacher.arch.n_head": 5}, r"teacher\.arch\.n_head: 5 heads do not divide teacher\.arch\.d_model 192"),
    ({"cache.max_gb": -1}, r"cache\.max_gb: -1\.0 must be a positive number of GB"),
    ({"experiment": "reference"}, r"experiment: 'reference' is reserved for the committed results"),
    ({"experiment": ".."}, r"experiment: '\.\.' must be a non-empty name without '/' or a leading '\.'"),
    ({"nosuch": 1}, r"unknown config key 'nosuch'; allowed keys: analysis, arms,"),
    ({"overwrite": "yes"}, r"overwrite: expected bool, got 'yes'"),
]


@pytest.mark.parametrize("changes, message", CONFIG_CASES, ids=[next(iter(c)) for c, _ in CONFIG_CASES])
def test_config_is_refused_in_one_line(changes, message):
    with pytest.raises(KdbenchError, match="^" + message) as e:
        load_experiment(config(**changes))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("a: [1, 2\nb: 3\n", r"bad\.yaml: line 2, column 2: malformed YAML \(expected ',' or '\]', but got ':'\)"),
    ("a:\n\tb: 1\n", r"bad\.yaml: line 2, column 1: malformed YAML \(found character '\\t'"),
    ("- 1\n- 2\n", r"bad\.yaml: a config file must be a mapping of keys, got list"),
])
def test_malformed_yaml_names_file_and_line(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(KdbenchError, match=message):
        read_config_file(tmp_path / "bad.yaml")


def test_kdbench_plan_reports_malformed_yaml_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("student: {train: {tokens: 10}\n")
    out = subprocess.run([sys.executable, "-m", "kdbench.cli", "plan", "--configfile", str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith(f"kdbench: error: {tmp_path / 'bad.yaml'}: line 2, column 1: malformed YAML")
    assert len(out.stderr.splitlines()) == 1


def test_a_missing_model_that_looks_like_a_hub_id_is_a_missing_path_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(KdbenchError, match=r"^teacher\.source: 'local/nosuch' is no local folder \(relative to .*\) "
                                           r"and not in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        check_paths(load_experiment(config(**{"teacher.source": "local/nosuch"})))
    check_paths(load_experiment(config(**{"teacher.source": "EleutherAI/pythia-410m"})))  # planned offline


def test_a_model_folder_that_vanished_is_named_when_loaded(tmp_path):
    from kdbench.models.causal_lm import load_model, load_tokenizer

    with pytest.raises(KdbenchError, match=r"^cannot load model: local path '.*/gone/teacher' does not exist"):
        load_model(tmp_path / "gone" / "teacher")
    with pytest.raises(KdbenchError, match=r"^cannot load tokenizer: local path '.*/gone/tok' does not exist"):
        load_tokenizer(tmp_path / "gone" / "tok")


def test_a_tiny_cache_limit_prints_readable_sizes():
    exp = load_experiment(config(**{"cache.max_gb": 0.0001}))
    with pytest.raises(KdbenchError, match=r"^cache\.max_gb: the planned teacher cache is [\d.,]+ [kMG]?B, above the "
                                           r"limit of 100\.00 kB"):
        teacher_mode(exp, {})


def _hold(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s lock until killed."""
    code = (f"import sys, time; sys.argv = ['snakemake', '--cores', '2']; from kdbench.schema.claim import claim; "
            f"claim(__import__('pathlib').Path({str(folder)!r}), {{}}, False); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_is_told_which_process_holds_the_folder(tmp_path):
    folder = tmp_path / "results" / "x"
    holder = _hold(folder)
    try:
        with pytest.raises(KdbenchError, match=rf"^{folder}/ is in use by another run \(PID {holder.pid} on .* since "
                                               r".*: snakemake --cores 2\); wait for it to end"):
            claim(folder, {}, False)
    finally:
        holder.kill()
        holder.wait()
    claim(folder, {}, False)  # the kernel released the lock with the process


def test_results_of_another_config_are_kept_unless_overwrite(tmp_path):
    folder = tmp_path / "results" / "x"
    old = config()
    claim(folder, old, False)
    stamp_config(folder, old)
    (folder / "summary.csv.prov.json").write_text("{}")  # a finished job's record: the folder holds results
    new = config(**{"stats.ci": 0.9, "seeds": [0, 1, 2, 3], "overwrite": True})
    with pytest.raises(KdbenchError, match=rf"^experiment: {folder}/ holds results of another config \(seeds, stats\.ci "
                                           r"differ\); choose a new experiment name, or pass --config overwrite=true"):
        claim(folder, new, False)
    claim(folder, new, True)
    claim(folder, {**old, "overwrite": True}, False)  # overwrite itself is no difference


def test_an_unwritable_results_folder_is_one_line(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(KdbenchError, match=rf"^{tmp_path}/results/x: Not a directory; make {tmp_path}/results/x/ "
                                           "writable or choose another experiment name"):
        claim(tmp_path / "results" / "x", {}, False)


def test_outputs_a_record_names_and_that_are_gone_are_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = Path("results/x")
    kept, gone = results / "eval/teacher/results.json", results / "eval/students/a/seed0/results.json"
    for path in (kept, gone):
        path.parent.mkdir(parents=True)
        Path(f"{path}.prov.json").write_text(json.dumps({"outputs": {"0": {str(path): "0" * 64}}}))
    kept.write_text("{}")
    (results / ".work").mkdir()
    (results / ".work" / "old.prov.json").write_text(json.dumps({"outputs": {"0": {"results/x/.work/old": ""}}}))
    assert lost_outputs(results) == [str(gone)]


def test_a_corrupt_checkpoint_is_set_aside_and_training_restarts(tmp_path, capsys):
    from kdbench.train.loop import _read_checkpoint

    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    assert _read_checkpoint(ckpt, "cpu", "student logit seed 0") is None
    assert not ckpt.exists() and (tmp_path / "ckpt.pt.corrupt").read_bytes() == b"PK\x03\x04 truncated"
    assert f"student logit seed 0: checkpoint {ckpt} is unreadable (" in capsys.readouterr().out
    assert _read_checkpoint(ckpt, "cpu", "x") is None  # none left: a fresh start


@pytest.mark.parametrize("error, line", [
    (PermissionError(errno.EACCES, "Permission denied", "results/x/teacher"),
     "results/x/teacher: Permission denied (EACCES)"),
    (OSError(errno.ENOSPC, "No space left on device", "results/x/cache/shard.npy"),
     "results/x/cache/shard.npy: No space left on device (ENOSPC)"),
])
def test_io_errors_in_jobs_are_one_line_with_path_and_errno(error, line):
    from kdbench.snake import os_error

    assert os_error(error).startswith(line) and "\n" not in os_error(error)


def test_budgets_are_labelled_with_the_tokens_trained(tmp_path):
    from kdbench.analysis.report import budget_models

    for arm in ("a", "b"):
        model = tmp_path / "budgets" / "b10000" / "students" / arm / "seed0"
        model.mkdir(parents=True)
        (model / "train.json").write_text(json.dumps({"tokens": 9216, "config": {"tokens": 10000}}))
    out = budget_models(tmp_path, {10000: ["budgets/b10000/students/a/seed0", "budgets/b10000/students/b/seed0"],
                                   20000: ["students/a/seed0"]})
    assert sorted(out) == [9216, 20000]  # no train.json: the configured budget


# Through Snakemake's parse: one line, before any job (dry runs in a fresh folder)
def test_dry_run_unknown_key_is_one_line_not_the_schema(tmp_path):
    (tmp_path / "typo.yaml").write_text("stats: {ci: 0.95}\nnosuch: 1\n")
    out = snakemake("-n", "--cores", "1", "--configfile", str(tmp_path / "typo.yaml"), cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "unknown config key 'nosuch'" in text and "additionalProperties" not in text


def test_dry_run_refuses_a_folder_another_run_holds(tmp_path):
    holder = _hold(tmp_path / "results" / "smoke")
    try:
        out = snakemake("-n", "--cores", "1", "--configfile", str(SMOKE), cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode != 0 and f"results/smoke/ is in use by another run (PID {holder.pid}" in out.stdout


def test_dry_run_refuses_results_of_another_config(tmp_path):
    folder = tmp_path / "results" / "smoke"
    folder.mkdir(parents=True)
    (folder / ".config.json").write_text(json.dumps({"experiment": "smoke", "seeds": [0]}))
    (folder / "summary.csv.prov.json").write_text("{}")
    out = snakemake("-n", "--cores", "1", "--configfile", str(SMOKE), cwd=tmp_path)
    assert out.returncode != 0 and "holds results of another config (" in out.stdout and "overwrite=true" in out.stdout
    out = snakemake("-n", "--cores", "1", "--configfile", str(SMOKE), "--config", "overwrite=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
