"""Checks that retrain a finished run's students and compare them on its suite, paired over seeds.

`bench_outcome`: the layer arms from the exact cache and from a compact one (`cache.layer_rank`);
`bench_branches`: budget-curve branches against separate cosine runs of the same length. Both run
through `python -m kdbench.bench outcome|branches`.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from kdbench import KdbenchError
from kdbench.analysis.report import ModelEval, item_frame, load_evals
from kdbench.analysis.stats import OVERALL, arm_means, paired_comparisons
from kdbench.cache.capture import cache_teacher
from kdbench.evaluate import evaluate_model
from kdbench.io import read_json
from kdbench.provenance import weights_sha256
from kdbench.schema.experiment import Experiment, cached_tokens, load_experiment
from kdbench.train.student import train_student

REPO = Path(__file__).resolve().parents[3]


def default_experiment() -> Experiment:
    """The experiment of config/config.yaml with every configured arm (its run_arms cleared): what the benchmarks
    time."""
    return load_experiment({**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), "run_arms": []})


OUTCOME_ARMS = ("logit_hidden", "logit_hidden_attn")


def _outcome_student(results: Path, variant: str, name: str, seed: int) -> ModelEval:
    """Train (unless done) and evaluate one student of `bench_outcome` from its variant's cache."""
    exp, out = default_experiment(), results / "compact-outcome"
    model, path = out / variant / name / f"seed{seed}", out / "eval" / variant / name / f"seed{seed}.json"
    if not model.exists():
        train_student(name, exp.arms[name], exp.student.train, seed, results / "students" / "init" / f"seed{seed}",
                      out / variant / "cache", results / "data", model, out / ".work" / variant / name / f"seed{seed}",
                      teacher_sha256=weights_sha256(results / "teacher"))
    if not path.exists():
        evaluate_model(model, exp.evaluation, path, results / "eval" / "tasks")
    return ModelEval(f"{variant}/{name}/seed{seed}", f"{name}.{variant}", seed, path)


def bench_outcome(results: Path, layer_rank: int, seeds: int, processes: int = 3) -> dict:
    """The default experiment's layer arms trained from the exact cache and from a compact one (`layer_rank`) with
    the same initialisations and batches, evaluated on the suite; per arm, compact minus exact paired over seeds
    and items (`stats.paired_comparisons`: interval and MDE). `results` holds a run's teacher, data, initial
    students and rendered tasks; what this trains goes to `results`/compact-outcome (kept, so a rerun resumes),
    `processes` students at a time, each on one thread (on a shared machine a thread each beats two: OpenMP's
    spinning threads measured 16x slower under load)."""
    torch.set_num_threads(1)
    exp = default_experiment()
    arms, out = {name: exp.arms[name] for name in OUTCOME_ARMS}, results / "compact-outcome"
    for variant, cfg in (("exact", exp.cache), ("compact", replace(exp.cache, layer_rank=layer_rank))):
        if not (out / variant / "cache" / "manifest.json").exists():
            cache_teacher(results / "teacher", results / "data", cfg, arms, exp.student.arch.n_layer,
                          cached_tokens(exp), out / variant / "cache", out / ".work" / variant / "cache")
    jobs = list(itertools.product(("exact", "compact"), OUTCOME_ARMS, range(seeds)))
    with ProcessPoolExecutor(processes, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        models = list(pool.map(_outcome_student, [results] * len(jobs), *zip(*jobs)))  # one thread each: no spinning
    items = item_frame(models, *load_evals(models), exp.stats.metric)
    table = {}
    for name in arms:
        cfg = replace(exp.stats, reference_arm=f"{name}.exact", candidate_arm=f"{name}.compact")
        row = paired_comparisons(items, [cfg.candidate_arm], cfg).set_index("task").loc[OVERALL]
        means = arm_means(items, [cfg.reference_arm, cfg.candidate_arm], cfg).set_index(["arm", "task"])["mean"]
        table[name] = {"exact": means[cfg.reference_arm, OVERALL], "compact": means[cfg.candidate_arm, OVERALL],
                       **{key: float(row[key]) for key in ("diff", "ci_lo", "ci_hi", "mde", "p")},
                       "within_mde": bool(abs(row["diff"]) < row["mde"]), "seeds": int(row["n_seeds"])}
    manifest = lambda variant: read_json(out / variant / "cache" / "manifest.json")["bytes_per_token"]
    return {"layer_rank": layer_rank, "metric": exp.stats.metric, "arms": table,
            "bytes_per_token": {variant: sum(manifest(variant).values()) for variant in ("exact", "compact")},
            "fidelity": read_json(out / "compact" / "cache" / "fidelity.json")}


def bench_branches(results: Path, budgets: list[int], preset: Path | None, work: Path) -> dict:
    """Per budget and curve arm: the branch's overall accuracy minus a separate cosine run's of the same length, over
    paired seeds (mean, t interval), beside the separate runs' own seed interval (half-width of their mean).

    `results` is a finished run of config/config.yaml (with `preset` merged over it, as --configfile does). The
    separate runs are trained here, at every budget, from the run's initialisations and cache and evaluated on its
    suite, into `work` (at the main budget the branch is the run's main student, `budget_model`).
    """
    from scipy import stats as sps

    from kdbench.analysis.curves import overall
    from kdbench.schema.checks import load_config
    from kdbench.schema.experiment import budget_arms, budget_model
    from kdbench.train.tuning import tuned

    params = read_json(Path(f"{results}/summary.csv.prov.json"))["params"]
    exp = load_experiment(load_config([REPO / "config" / "config.yaml", *([preset] if preset else [])]))
    if exp.experiment != Path(results).name:
        raise KdbenchError(f"bench branches: {results} is not a run of the config's experiment {exp.experiment!r}")
    out = {"budgets": {}, "decay": exp.analysis.decay}
    for budget in budgets:
        rows = {}
        for arm in budget_arms(exp):
            pairs = []
            for seed in exp.seeds[: exp.analysis.budget_seeds]:
                branch = results / "eval" / budget_model(exp, budget, arm, seed) / "results.json"
                model, separate = work / f"b{budget}" / arm / f"seed{seed}", work / f"b{budget}" / f"{arm}{seed}.json"
                if not model.is_dir():  # a cosine run, with the arm's tuned settings where the run tuned it
                    spec, train = (tuned(results / "tuning" / arm, arm, exp.student.train) if exp.tuning.enabled
                                   else (exp.arms[arm], exp.student.train))
                    train_student(arm, spec, replace(train, tokens=budget), seed,
                                  results / "students" / "init" / f"seed{seed}", results / "cache",
                                  results / "data", model, work / "work" / f"b{budget}{arm}{seed}")
                if not separate.is_file():
                    evaluate_model(model, exp.evaluation, separate, results / "eval" / "tasks")
                models = [ModelEval(f"{kind}/{arm}/seed{seed}", kind, seed, path)
                          for kind, path in (("branch", branch), ("separate", separate))]
                evals, tasks = load_evals(models)
                acc = overall(item_frame(models, evals, tasks, params["stats"].get("metric", "acc")))
                pairs.append(100 * acc.set_index("arm")["acc"].reindex(["branch", "separate"]).to_numpy())
            pairs = np.array(pairs)
            d, n = pairs[:, 0] - pairs[:, 1], len(pairs)
            t = sps.t.ppf(0.975, n - 1)
            rows[arm] = {"branch": pairs[:, 0].round(2).tolist(), "separate": pairs[:, 1].round(2).tolist(),
                         "diff": float(d.mean()), "diff_half_width": float(t * d.std(ddof=1) / np.sqrt(n)),
                         "seed_half_width": float(t * pairs[:, 1].std(ddof=1) / np.sqrt(n)),
                         "within_seed_interval": bool(abs(d.mean()) <= t * pairs[:, 1].std(ddof=1) / np.sqrt(n))}
            print(f"b{budget} {arm}: branch {pairs[:, 0].mean():.1f} separate {pairs[:, 1].mean():.1f} "
                  f"diff {d.mean():+.1f} +- {rows[arm]['diff_half_width']:.1f} (seed half-width "
                  f"{rows[arm]['seed_half_width']:.1f})", flush=True)
        out["budgets"][str(budget)] = rows
    return out
