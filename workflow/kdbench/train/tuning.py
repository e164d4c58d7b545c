"""Equal-budget tuning of every arm: learning rate, temperature and teacher-term weights, on the validation split.

Every arm, `ce` included, gets the same number of trials of the same token budget. Trial i
draws its settings in the same order for every arm (one seeded stream), so trial i of two arms
shares its learning-rate multiplier: their difference at each setting is a paired comparison.
A knob an arm does not have (the temperature of an arm without logit terms, the weights of
`ce`) is drawn and left unused. Trials are judged by validation cross-entropy on held-out
sequences of the training distribution, never on the evaluation suite; with `sensitivity`, the
headline pair's trials are also scored on the suite, for the report only.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

from kdbench.schema.arms import ArmConfig
from kdbench.cache.capture import Online
from kdbench.schema.config import EvalConfig, TrainConfig, TuningConfig, as_dict, build
from kdbench.evaluate import evaluate_model
from kdbench.io import atomic_dir, read_json, write_json
from kdbench.models.causal_lm import save_model
from kdbench.schema.registry import spec
from kdbench.train.student import fit_student


def candidates(arm: ArmConfig, train: TrainConfig, cfg: TuningConfig) -> list[tuple[ArmConfig, TrainConfig]]:
    """The arm and training settings as configured, then `trials - 1` seeded draws from the search space."""
    rng = random.Random(cfg.seed)
    out = [(arm, train)]
    for _ in range(cfg.trials - 1):
        lr, temperature, scale = (math.exp(rng.uniform(math.log(lo), math.log(hi)))
                                  for lo, hi in (cfg.lr_scale, cfg.temperature, cfg.weight_scale))
        terms = {n: w * scale if spec(n).reads else w for n, w in arm.terms.items()}
        drawn = replace(arm, terms=terms, temperature=temperature if "logits" in arm.reads else arm.temperature)
        out.append((drawn, replace(train, lr=train.lr * lr)))
    return out


def tune_arm(arm_name: str, arm: ArmConfig, train: TrainConfig, cfg: TuningConfig, init_dir: Path, teacher: Path,
             data_dir: Path, out_dir: Path, work_dir: Path, score: tuple[EvalConfig, Path | None] | None = None,
             online: Online | None = None) -> tuple[ArmConfig, TrainConfig]:
    """Train every candidate on `cfg.tokens` tokens; keep the lowest validation loss.

    Writes `out_dir/tuning.json`. With `score` (the evaluation settings and the rendered suite),
    each trial is also scored on the suite, its per-item results in `out_dir/trial<i>.json`.
    """
    trials = []
    with atomic_dir(out_dir) as out:
        for i, (candidate, settings) in enumerate(candidates(arm, train, cfg)):
            work = Path(work_dir) / f"trial{i}"
            model, _, summary = fit_student(f"{arm_name}/trial{i}", candidate, replace(settings, tokens=cfg.tokens),
                                            cfg.seed, init_dir, teacher, data_dir, work, online)
            trial = {"arm": as_dict(candidate), "lr": settings.lr, "val_loss": summary["val_loss"]}
            if score is not None:
                with atomic_dir(work / "model") as tmp:
                    save_model(model.cpu(), init_dir, tmp)
                evaluate_model(work / "model", score[0], out / f"trial{i}.json", score[1])
                trial["scores"] = f"trial{i}.json"
            trials.append(trial)
            print(f"tune {arm_name}: trial {i} val_loss {summary['val_loss']:.4f} lr {settings.lr:.3g} "
                  f"{as_dict(candidate)}", flush=True)
        best = min(range(len(trials)), key=lambda i: trials[i]["val_loss"])
        write_json(out / "tuning.json", {"arm": arm_name, "chosen": trials[best]["arm"], "lr": trials[best]["lr"],
                                         "best": best, "trials": trials, "tuning": as_dict(cfg)})
    return candidates(arm, train, cfg)[best]


def tuned(tuning_dir: Path, arm_name: str, train: TrainConfig) -> tuple[ArmConfig, TrainConfig]:
    """The arm settings and training config of the trial that won an arm's tuning (its `tuning.json`)."""
    record = read_json(Path(tuning_dir) / "tuning.json")
    return build(ArmConfig, record["chosen"], f"arms.{arm_name}"), replace(train, lr=record["lr"])
