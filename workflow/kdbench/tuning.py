"""Equal-budget tuning of each arm's temperature and teacher-term weights on the validation split.

Every arm gets the same number of trials of the same token budget, drawn from one seeded
search space, and is judged by validation cross-entropy on held-out sequences of the training
distribution: never on the evaluation suite. Arms without teacher terms have nothing to tune.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

from kdbench.arms import ArmConfig
from kdbench.capture import Online
from kdbench.config import TrainConfig, TuningConfig, as_dict
from kdbench.registry import spec
from kdbench.io import write_json
from kdbench.student import fit_student



def candidates(arm: ArmConfig, cfg: TuningConfig) -> list[ArmConfig]:
    """The arm as configured plus `trials - 1` seeded draws from the search space."""
    if not arm.uses_teacher:
        return [arm]
    rng = random.Random(cfg.seed)
    draw = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))
    out = [arm]
    for _ in range(cfg.trials - 1):
        temperature, scale = draw(*cfg.temperature), draw(*cfg.weight_scale)
        terms = {n: w * scale if spec(n).reads else w for n, w in arm.terms.items()}
        out.append(replace(arm, terms=terms,
                           temperature=temperature if "logits" in arm.reads else arm.temperature))
    return out


def tune_arm(arm_name: str, arm: ArmConfig, train: TrainConfig, cfg: TuningConfig, init_dir: Path, teacher: Path,
             data_dir: Path, out_path: Path, work_dir: Path, online: Online | None = None) -> ArmConfig:
    """Train every candidate on `cfg.tokens` tokens; keep the lowest validation loss."""
    trials = []
    for i, candidate in enumerate(candidates(arm, cfg)):
        _, _, summary = fit_student(f"{arm_name}/trial{i}", candidate, replace(train, tokens=cfg.tokens), cfg.seed,
                                    init_dir, teacher, data_dir, Path(work_dir) / f"trial{i}", online)
        trials.append({"arm": as_dict(candidate), "val_loss": summary["val_loss"]})
        print(f"tune {arm_name}: trial {i} val_loss {summary['val_loss']:.4f} {as_dict(candidate)}", flush=True)
    best = min(range(len(trials)), key=lambda i: trials[i]["val_loss"])
    write_json(out_path, {"arm": arm_name, "chosen": trials[best]["arm"], "trials": trials, "tuning": as_dict(cfg)})
    return candidates(arm, cfg)[best]
