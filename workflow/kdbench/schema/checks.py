"""Planning checks the workflow runs when it parses, on what the config names outside itself.

`experiment.load_experiment` checks the config as data; these look at the files and names it
points to: duplicated keys in the config files themselves (a YAML mapping silently keeps the
last), local model and corpus paths that do not exist, and lm-eval task names. Each failure is
one line naming the key. Parse-time module: stdlib and yaml only; lm-eval's task index is built
once in a subprocess (its import takes seconds) and kept per lm-eval version.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterable

import yaml

from kdbench import KdbenchError
from kdbench.schema.arms import check_arms

# A hub repo id: "name" or "owner/name" (letters, digits, '-', '_', '.'); anything else is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_LOCAL_CORPUS = (".txt", ".jsonl")  # data.source suffixes read as local files (kdbench.data.tokens)
SUITE_ALIAS = "synthetic"  # the rendered world suite (kdbench.evaluate), not an lm-eval name
# config.json of hub models for planning offline (config/models/<owner>/<name>/), when the hub cache has none
PLANNING_CONFIGS = Path(__file__).resolve().parents[3] / "config" / "models"
DESCRIBE_VERSION = 4  # of `models.describe`'s answer, kept per config: 2 head_dim, compute_params; 3 kv_heads; 4 windows


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping, naming its dotted path and line."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise KdbenchError(f"{loader.name}: key {key!r} appears twice in one mapping "
                               f"(lines {seen[key] + 1} and {key_node.start_mark.line + 1}); YAML would keep the last")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def read_config_file(path: str | Path) -> dict:
    """One config file's mapping; malformed YAML, a key given twice in one mapping or a file that is not a mapping
    is refused in one line naming the file (and the line)."""
    try:
        with open(path) as f:
            loader = _StrictLoader(f)
            loader.name = str(path)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except OSError as e:
        raise KdbenchError(f"{path}: cannot read the config file ({e.strerror})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise KdbenchError(f"{path}:{where} malformed YAML ({what}); fix the file") from e
    if data is not None and not isinstance(data, dict):
        raise KdbenchError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data or {}


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Refuse a config file that is malformed or in which a key appears twice within one mapping."""
    for path in paths:
        read_config_file(path)


def load_config(paths: Iterable[str | Path]) -> dict:
    """Config files merged as Snakemake merges `--configfile`s: later files update mappings key by key."""
    def update(base: dict, new: dict) -> dict:
        for key, value in new.items():
            base[key] = update(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
                else value
        return base
    merged: dict = {}
    for path in paths:
        update(merged, read_config_file(path))
    return merged


def source_kind(source: str) -> str:
    """'local' for an existing path or one that cannot be a hub id, else 'hub'."""
    return "local" if Path(source).expanduser().exists() or not _HUB_ID.match(source) else "hub"


def check_paths(exp) -> None:
    """Local model directories and corpus files the config names must exist (else one line naming the key)."""
    source = exp.data.source
    if source.endswith(_LOCAL_CORPUS) and not Path(source).expanduser().exists():
        raise KdbenchError(f"data.source: local path {source!r} does not exist (relative to {os.getcwd()})")
    models = [("teacher.source", exp.teacher.source, exp.teacher.revision)] if not exp.trains_teacher else []
    if exp.student.init not in ("random", "teacher_layers"):
        models.append(("student.init", exp.student.init, exp.student.revision))
    for key, source, revision in models:
        why = missing_model(source, revision)
        if why and not (PLANNING_CONFIGS / source / "config.json").is_file():  # a planning copy: plan offline
            raise KdbenchError(f"{key}: {why}")


def hub_offline() -> bool:
    """Whether Hugging Face's hub is switched off (HF_HUB_OFFLINE, as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def missing_model(source: str, revision: str | None = None, marker: str | None = "config.json") -> str | None:
    """Why a model (a tokenizer: `marker` None) cannot be loaded from `source` as things stand (None when it can,
    or the hub may give it): a missing local folder, one without `marker`, or, with the hub offline, a name that
    is neither a folder nor cached."""
    path = Path(source).expanduser()
    if path.exists():
        return None if marker is None or (path / marker).is_file() else \
            f"{source!r} is a local path without {marker}, not a saved model"
    if source_kind(source) == "local":
        return f"local path {source!r} does not exist (relative to {os.getcwd()})"
    if hub_offline() and _hub_config_dir(source, revision) is None:
        return (f"{source!r} is no local folder (relative to {os.getcwd()}) and not in the Hugging Face cache, and "
                "HF_HUB_OFFLINE is set: fix the path, or fetch the model where the hub is reachable")
    return None


def lm_eval_tasks(cache_dir: Path = Path(".snakemake/kdbench")) -> frozenset[str]:
    """Every task, group and tag name lm-eval's TaskManager knows; indexed once per lm-eval version."""
    try:
        tag = version("lm_eval")
    except PackageNotFoundError as e:
        raise KdbenchError("evaluation.tasks: lm-eval is not installed") from e
    index = cache_dir / f"lm_eval-{tag}-tasks.json"
    if not index.exists():
        code = ("import json, sys; from lm_eval.tasks import TaskManager; "
                "json.dump(sorted(TaskManager().all_tasks), sys.stdout)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            raise KdbenchError(f"evaluation.tasks: cannot list lm-eval tasks: {done.stderr.strip().splitlines()[-1:]}")
        _write(index, done.stdout)
    return frozenset(json.loads(index.read_text()))


def check_tasks(names: Iterable[str], cache_dir: Path = Path(".snakemake/kdbench")) -> None:
    """Every evaluation task other than the synthetic suite must be an lm-eval name."""
    wanted = [n for n in names if n != SUITE_ALIAS]
    if not wanted:
        return  # the default: no lm-eval index needed
    known = lm_eval_tasks(cache_dir)
    for i, name in enumerate(names):
        if name != SUITE_ALIAS and name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KdbenchError(f"evaluation.tasks[{i}]: unknown lm-eval task {name!r}{hint}")


def _hub_config_dir(repo: str, revision: str | None) -> Path | None:
    """The snapshot folder of a hub model in the local Hugging Face cache, if its config.json is there."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    root = hub.expanduser() / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = root / "snapshots" / commit if commit else None
    return snapshot if snapshot is not None and (snapshot / "config.json").is_file() else None


def model_config_dir(source: str, revision: str | None = None) -> Path | None:
    """Where a model's config.json can be read without the network: its directory, the hub cache, or the
    planning copy under config/models/ (architecture only; the jobs load the hub's own)."""
    if source_kind(source) == "local":
        return Path(source).expanduser()
    found = _hub_config_dir(source, revision)
    return found or (PLANNING_CONFIGS / source if (PLANNING_CONFIGS / source / "config.json").is_file() else None)


def describe_model(source: str, revision: str | None = None,
                   cache_dir: Path = Path(".snakemake/kdbench")) -> dict | None:
    """`kdbench.models.causal_lm.describe` of a model from its config alone (None when no config.json is at hand).

    Runs in a subprocess, since building even a weightless model imports torch and transformers;
    the answer is kept per config.json content.
    """
    folder = model_config_dir(source, revision)
    if folder is None:
        return None
    config = (folder / "config.json").read_bytes()
    kept = cache_dir / f"model{DESCRIBE_VERSION}-{hashlib.sha256(config).hexdigest()[:16]}.json"
    if not kept.exists():
        package = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([package, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-m", "kdbench.models.causal_lm", str(folder)], capture_output=True, text=True,
                              env=env)
        if done.returncode:
            raise KdbenchError(f"{source}: cannot read its config ({done.stderr.strip().splitlines()[-1:]})")
        _write(kept, done.stdout)
    return json.loads(kept.read_text())


def check_models(exp, cache_dir: Path = Path(".snakemake/kdbench")) -> dict[str, dict | None]:
    """Describe the pretrained teacher and student from their configs; refuse, before any job, an arm that
    needs a component a model cannot give and a layer map that does not fit the loaded depths.

    Returns {"teacher": ..., "student": ...} (None where trained or built here, or no config is at hand).
    """
    pretrained = exp.student.init not in ("random", "teacher_layers")
    found = {"teacher": None if exp.trains_teacher else describe_model(exp.teacher.source, exp.teacher.revision,
                                                                       cache_dir),
             "student": describe_model(exp.student.init, exp.student.revision, cache_dir) if pretrained else None}
    keys = {"teacher": ("teacher.source", exp.teacher.source), "student": ("student.init", exp.student.init)}
    for side, info in found.items():
        if info is None:
            continue
        key, source = keys[side]
        if "error" in info:
            raise KdbenchError(f"{key}: {source!r}: {info['error']}")
        for name, arm in exp.arms.items():
            for component in arm.layer_components:
                if component in info["missing"]:
                    raise KdbenchError(f"arms.{name}: the {side} {source!r} ({info['model_type']}) cannot give "
                                       f"{component}, which {', '.join(sorted(arm.terms))} read: "
                                       f"{info['missing'][component]}")
    n_teacher = exp.teacher.arch.n_layer if exp.trains_teacher else (found["teacher"] or {}).get("n_layer")
    check_arms(exp.arms, student_depth(exp, found["student"]), n_teacher)  # maps against the loaded depths
    if found["teacher"]:
        check_windows(exp, found["teacher"], student_depth(exp, found["student"]))
    if pretrained and not exp.trains_teacher:
        check_tokenizers(exp)
    return found


def check_windows(exp, teacher: dict, n_student: int) -> None:
    """Refuse attention layers whose sliding windows differ within `data.seq_len`, naming the arms, the model and the
    windows: the cache derives the maps of all its attention layers under one mask."""
    arms = {name: [t for _, t in arm.pairs(n_student, teacher["n_layer"])] for name, arm in exp.arms.items()
            if "attentions" in arm.layer_components}
    windows, steps = teacher.get("windows") or [None] * teacher["n_layer"], exp.data.seq_len
    cut = {t: windows[t - 1] if windows[t - 1] and windows[t - 1] < steps else None  # a longer window cuts nothing
           for layers in arms.values() for t in sorted(layers)}
    if len(set(cut.values())) > 1:
        raise KdbenchError(f"arms.{', arms.'.join(arms)}: the teacher {exp.teacher.source!r} ({teacher['model_type']}) "
                           f"has sliding windows shorter than data.seq_len {steps} in some mapped attention "
                           f"layers and not in others (layer: window {cut}, None the whole sequence); the cache derives "
                           "every layer's maps under one mask: map the attention terms to layers of one kind")


def check_tokenizers(exp) -> None:
    """Refuse a pretrained student whose tokenizer is not the teacher's, when both tokenizer.json files are at hand
    (local directories, the hub cache); otherwise `student.init_student` compares them, before any student trains."""
    sides = (("student.init", exp.student.init, exp.student.revision),
             ("teacher.source", exp.teacher.source, exp.teacher.revision))
    ids = [tokenizer_ids(model_config_dir(source, revision)) for _, source, revision in sides]
    if None not in ids and ids[0] != ids[1]:
        (key_s, student, _), (key_t, teacher, _) = sides
        raise KdbenchError(tokenizer_mismatch(f"{key_s} {student!r}", ids[0], f"{key_t} {teacher!r}", ids[1]))


def tokenizer_ids(folder: Path | None) -> dict[str, int] | None:
    """token -> id of the tokenizer.json in `folder` (its model's vocabulary and added tokens: what `get_vocab`
    gives), None without one; read as JSON, so parsing needs no transformers."""
    path = folder / "tokenizer.json" if folder else None
    if path is None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    vocab = data["model"].get("vocab") or {}
    ids = dict(vocab) if isinstance(vocab, dict) else {piece: i for i, (piece, _) in enumerate(vocab)}  # Unigram's list
    return {**ids, **{token["content"]: token["id"] for token in data.get("added_tokens", [])}}


def tokenizer_mismatch(student: str, s_ids: dict[str, int], teacher: str, t_ids: dict[str, int],
                       specials: tuple[dict, dict] | None = None) -> str:
    """One line on how the student's and the teacher's tokenizers (token -> id, named by where they come from)
    differ: the tokens only one has, else the first token whose id differs, else their `specials`."""
    only_s = sorted(s_ids.keys() - t_ids.keys(), key=s_ids.get)
    only_t = sorted(t_ids.keys() - s_ids.keys(), key=t_ids.get)
    moved = sorted((t for t in s_ids.keys() & t_ids.keys() if s_ids[t] != t_ids[t]), key=s_ids.get)
    first = lambda tokens: f" (first {tokens[0]!r})" if tokens else ""
    if only_s or only_t:
        why = (f"{len(only_s)} tokens only in the student's{first(only_s)}, "
               f"{len(only_t)} only in the teacher's{first(only_t)}")
    elif moved:
        why = f"token {moved[0]!r} has id {s_ids[moved[0]]} in the student's, {t_ids[moved[0]]} in the teacher's"
    else:
        why = f"special tokens {specials[0]} in the student's, {specials[1]} in the teacher's"
    return (f"tokenizer mismatch: {student} ({len(s_ids)} tokens) and {teacher} ({len(t_ids)} tokens) differ: {why}; "
            "logit distillation needs one shared tokenizer")


def student_depth(exp, student: dict | None) -> int:
    """The student's number of blocks: the loaded model's when pretrained, else the configured architecture's."""
    return student["n_layer"] if student else exp.student.arch.n_layer


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
