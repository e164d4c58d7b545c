"""Planning checks the workflow runs when it parses, on what the config names outside itself.

`experiment.load_experiment` checks the config as data; these look at the files and names it
points to: duplicated keys in the config files themselves (a YAML mapping silently keeps the
last), local model and corpus paths that do not exist, and lm-eval task names. Each failure is
one line naming the key. Parse-time module: stdlib and yaml only; lm-eval's task index is built
once in a subprocess (its import takes seconds) and kept per lm-eval version.
"""

from __future__ import annotations

import difflib
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

# A hub repo id: "name" or "owner/name" (letters, digits, '-', '_', '.'); anything else is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_LOCAL_CORPUS = (".txt", ".jsonl")  # data.source suffixes read as local files (kdbench.data)
SUITE_ALIAS = "synthetic"  # the rendered world suite (kdbench.evaluate), not an lm-eval name


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


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Refuse a config file in which a key appears twice within one mapping."""
    for path in paths:
        with open(path) as f:
            loader = _StrictLoader(f)
            loader.name = str(path)
            try:
                loader.get_single_data()
            finally:
                loader.dispose()


def source_kind(source: str) -> str:
    """'local' for an existing path or one that cannot be a hub id, else 'hub'."""
    return "local" if Path(source).expanduser().exists() or not _HUB_ID.match(source) else "hub"


def check_paths(exp) -> None:
    """Local model directories and corpus files the config names must exist (else one line naming the key)."""
    named = [("data.source", exp.data.source, exp.data.source.endswith(_LOCAL_CORPUS))]
    if not exp.trains_teacher:
        named.append(("teacher.source", exp.teacher.source, False))
    if exp.student.init not in ("random", "teacher_layers"):
        named.append(("student.init", exp.student.init, False))
    for key, source, is_file in named:
        if key == "data.source" and source == "world":
            continue
        path = Path(source).expanduser()
        if (is_file or source_kind(source) == "local") and not path.exists():
            raise KdbenchError(f"{key}: local path {source!r} does not exist (relative to {os.getcwd()})")
        if path.exists() and not is_file and not (path / "config.json").is_file():
            raise KdbenchError(f"{key}: {source!r} is a local path without config.json, not a saved model")


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
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(done.stdout)
        tmp.replace(index)
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
