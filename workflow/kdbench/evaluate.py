"""Held-out evaluation with lm-eval: render the local suite as lm-eval tasks, score one model.

Every model (teacher, untrained student, trained students) goes through the same
`evaluate_model` call, so the numbers differ only by weights. The synthetic suite is
rendered as ordinary lm-eval YAML tasks, so it shares the code path of lm-eval's
built-in tasks (arc_easy, piqa, ...). Per-item records are kept so that the
statistics can pair the same item across models and seeds.

Output JSON (one per model), keys sorted:

    {
      "format": "kdbench-eval/2",
      "model_sha256": str,            # sha256_dir-style hash over the weight files only
      "tokenizer_json_sha256": str | null,  # of tokenizer.json, which also decides the scores
      "lm_eval_version": str, "batch_size": int, "limit": int | null,
      "device": str, "dtype": str, "seeds": {"random": 0, "numpy": 1234, ...},
      "cache_key": str,
      "tasks": {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr": float,
                       "n": int, "task_sha256": str, "version": str}},
      "samples": {task: [{"doc_id": int, "id": str | null, "acc": float, "acc_norm": float,
                          "n_choices": int, "label": int | str, "loglik": [float, ...]}]}
    }
"""

from __future__ import annotations

import difflib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from kdbench import KdbenchError
from kdbench.schema.checks import SUITE_ALIAS  # config name for the rendered local suite
from kdbench.schema.config import EvalConfig
from kdbench.io import atomic_path, read_json, sha256_file, write_json
from kdbench.provenance import weights_sha256

FORMAT = "kdbench-eval/2"  # 2: tokenizer_json_sha256 (the file), not tokenizer_sha256
GROUP = "kdb_suite"
TASK_PREFIX = "kdb_"  # rendered suite tasks are kdb_<family>
TASK_VERSION = 1.0  # bump when the rendered prompt format changes
# Fixed seeds: zero-shot multiple choice is deterministic, but lm-eval seeds its samplers anyway.
_SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}
_METRICS = ({"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True})



def task_label(task: str) -> str:
    """Display name: suite tasks by family ("kdb_agreement" -> "agreement"), lm-eval tasks as named."""
    return task.removeprefix(TASK_PREFIX)


def render_tasks(suite_dir: Path, out_dir: Path) -> list[str]:
    """Write one lm-eval task YAML per suite family plus the group `kdb_suite`; return task names.

    Data paths are absolute because lm-eval resolves relative ones against the working
    directory, not against the YAML.
    """
    suite_dir, out_dir = Path(suite_dir).resolve(), Path(out_dir)
    index = suite_dir / "suite.json"
    if not index.is_file():
        raise KdbenchError(f"task suite {suite_dir}: no suite.json")
    families = list(read_json(index))
    if not families:
        raise KdbenchError(f"task suite {suite_dir}: suite.json lists no task families")
    names = []
    for family in families:
        data = suite_dir / f"{family}.jsonl"
        if not data.is_file() or not data.read_text().strip():
            raise KdbenchError(f"task suite {suite_dir}: family {family!r} has no items ({data.name} missing or empty)")
        name = f"{TASK_PREFIX}{family}"
        _write_yaml(out_dir / f"{name}.yaml", {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            # field names, not Jinja templates: lm-eval reads a named field directly, where a template
            # is compiled again for every document (half of an evaluation's time on the default suite)
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": "",  # choices carry their own leading space
            "metric_list": list(_METRICS),
            "metadata": {"version": TASK_VERSION},
        })
        names.append(name)
    _write_yaml(out_dir / f"{GROUP}.yaml", {
        "group": GROUP,
        "task": names,
        # Unweighted mean over families, like the report's "overall".
        "aggregate_metric_list": [{"metric": m["metric"], "weight_by_size": False} for m in _METRICS],
        "metadata": {"version": TASK_VERSION},
    })
    return names


def evaluate_model(model_dir: Path, cfg: EvalConfig, out_path: Path, include_path: Path | None,
                   store_dir: Path | None = None) -> dict:
    """Score `model_dir` on `cfg.tasks`, write the result JSON to `out_path` and return it.

    With `store_dir`, a result already computed for the same weights, tokenizer, task data,
    lm-eval version, batch size, limit and dtype is copied instead of recomputed.
    """
    model_dir = Path(model_dir)
    weights_sha, tokenizer_sha = model_hashes(model_dir)
    from lm_eval import __version__ as lm_eval_version

    manager, tasks = _load_tasks(cfg.tasks, include_path)
    task_sha = {name: _task_sha256(task) for name, task in tasks.items()}
    key = _sha256_json({"format": FORMAT, "model": weights_sha, "tokenizer": tokenizer_sha, "tasks": task_sha,
                        "lm_eval": lm_eval_version, "batch_size": cfg.batch_size,
                        "limit": cfg.limit, "dtype": cfg.dtype})
    stored = Path(store_dir) / f"{key}.json" if store_dir is not None else None
    if stored is not None and stored.is_file():
        with atomic_path(Path(out_path)) as tmp:
            shutil.copyfile(stored, tmp)
        return read_json(out_path)

    device = resolve_device(cfg.device)
    raw = _run_lm_eval(model_dir, cfg, device, manager, tasks)
    result = {
        "format": FORMAT,
        "model_sha256": weights_sha,
        "tokenizer_json_sha256": tokenizer_sha,
        "lm_eval_version": lm_eval_version,
        "batch_size": cfg.batch_size,
        "limit": cfg.limit,
        "device": device,
        "dtype": cfg.dtype,
        "seeds": dict(_SEEDS),
        "cache_key": key,
        "tasks": {name: _task_summary(raw, name, task_sha[name]) for name in tasks},
        "samples": {name: [_sample_record(s) for s in sorted(raw["samples"][name], key=lambda s: s["doc_id"])]
                    for name in tasks},
    }
    write_json(out_path, result, compact=True)  # per-item records: half the bytes of indented JSON
    if stored is not None:
        write_json(stored, result, compact=True)
    return result


def resolve_device(device: str) -> str:
    """Resolve "auto" to "cuda" when torch sees a GPU, else "cpu"; any other name is used as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_yaml(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def model_hashes(model_dir: Path) -> tuple[str, str | None]:
    """(hash over the weight files, hash of tokenizer.json or None); fails early on a bad dir."""
    tokenizer = model_dir / "tokenizer.json"
    return weights_sha256(model_dir), sha256_file(tokenizer) if tokenizer.is_file() else None


def _load_tasks(names: tuple[str, ...], include_path: Path | None) -> tuple[Any, dict[str, Any]]:
    """(TaskManager, leaf Task objects by name); lm-eval's thousands of built-in tasks are indexed only if asked for."""
    from lm_eval.tasks import TaskManager

    if not names:
        raise KdbenchError("evaluation: no tasks configured")
    if SUITE_ALIAS in names and include_path is None:
        raise KdbenchError(f"evaluation: task {SUITE_ALIAS!r} needs the rendered suite folder (include_path)")
    specs = [GROUP if n == SUITE_ALIAS else n for n in names]
    include = str(Path(include_path).resolve()) if include_path is not None else None
    manager = TaskManager(include_path=include, include_defaults=False) if include else None
    if manager is None or any(s not in manager.all_tasks for s in specs):
        manager = TaskManager(include_path=include, include_defaults=True)
    for spec in specs:
        if spec not in manager.all_tasks:
            close = difflib.get_close_matches(spec, manager.all_tasks, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KdbenchError(f"evaluation: unknown lm-eval task {spec!r}{hint}")
    tasks = manager.load(specs)["tasks"]
    if not tasks:
        raise KdbenchError(f"evaluation: tasks {', '.join(names)} contain no items to score")
    for name, task in tasks.items():
        if task.OUTPUT_TYPE != "multiple_choice":
            raise KdbenchError(f"evaluation: task {name!r} is {task.OUTPUT_TYPE}; only multiple_choice tasks are scored")
    return manager, tasks


def _task_sha256(task: Any) -> str:
    """Hash of the documents lm-eval scores and of the prompt format, i.e. of what decides the numbers."""
    cfg = task.config
    prompt = {k: str(getattr(cfg, k, None)) for k in
              ("doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter", "num_fewshot", "description")}
    h = hashlib.sha256(json.dumps(prompt, sort_keys=True).encode())
    for doc in task.eval_docs:
        h.update(json.dumps(doc, sort_keys=True, default=str).encode() + b"\n")
    return h.hexdigest()


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _run_lm_eval(model_dir: Path, cfg: EvalConfig, device: str, manager: Any, tasks: dict[str, Any]) -> dict:
    from lm_eval import evaluator

    raw = evaluator.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": cfg.dtype},
        tasks=list(tasks.values()),
        task_manager=manager,  # without it lm-eval re-indexes all its built-in tasks
        batch_size=cfg.batch_size,
        device=device,
        limit=cfg.limit,
        log_samples=True,
        random_seed=_SEEDS["random"],
        numpy_random_seed=_SEEDS["numpy"],
        torch_random_seed=_SEEDS["torch"],
        fewshot_random_seed=_SEEDS["fewshot"],
    )
    if raw is None:
        raise KdbenchError(f"evaluation of {model_dir}: lm-eval returned no results")
    return raw


def _task_summary(raw: dict, name: str, task_sha: str) -> dict:
    """A task's scores; a task without a length-normalised score (winogrande scores partial
    sentences) reports its accuracy as `acc_norm`, so an `acc_norm` comparison covers every task."""
    metrics = raw["results"][name]
    norm = "acc_norm" if "acc_norm,none" in metrics else "acc"
    return {
        "acc": _number(metrics["acc,none"]), "acc_stderr": _number(metrics["acc_stderr,none"]),
        "acc_norm": _number(metrics[f"{norm},none"]), "acc_norm_stderr": _number(metrics[f"{norm}_stderr,none"]),
        "n": len(raw["samples"][name]),
        "task_sha256": task_sha,
        "version": str(raw["versions"][name]),
    }


def _number(value: Any) -> float | None:
    """lm-eval reports "N/A" for a stderr it cannot compute (e.g. one item)."""
    return float(value) if isinstance(value, (int, float)) else None


def _sample_record(sample: dict) -> dict:
    """Compact per-item record: enough to pair items across models and to recompute chance."""
    doc = sample["doc"]
    label = sample["target"]
    return {
        "doc_id": sample["doc_id"],
        "id": doc.get("id") if isinstance(doc, dict) else None,
        "acc": float(sample["acc"]),
        "acc_norm": float(sample.get("acc_norm", sample["acc"])),  # see `_task_summary`
        "n_choices": len(sample["resps"]),
        "label": int(label) if isinstance(label, str) and label.isdigit() else label,
        "loglik": [float(r[0][0]) for r in sample["resps"]],
    }
