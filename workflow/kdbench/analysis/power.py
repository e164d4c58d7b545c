"""Power planning: how many seeds and items the headline comparison needs for a target MDE.

From a finished results folder, the paired differences of candidate minus reference
give the variance components of the overall difference (`kdbench.analysis.stats.MeanSquares`):
seed (shared by all tasks), item and residual per task. A design with other seed and
item counts has expected mean squares built from those components, and its minimal
detectable difference (MDE) is computed exactly as the report computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdbench import KdbenchError
from kdbench.analysis import report, stats
from kdbench.schema.config import StatsConfig
from kdbench.analysis.stats import MeanSquares

SEEDS = range(3, 21)
ITEM_FACTORS = (0.5, 1, 2, 4)
MAX_SEEDS = 100
ITEM_SEARCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # item multipliers tried for the target


@dataclass(frozen=True)
class Components:
    """Variance components of the mean paired difference, in fractions squared.

    seed: of a seed's mean over tasks (tasks weighted equally); item and resid: per task.
    """

    seed: float
    item: tuple[float, ...]
    resid: tuple[float, ...]
    items: tuple[int, ...]  # items per task in the observed design

    @classmethod
    def from_mean_squares(cls, ms: MeanSquares) -> Components:
        """Moment estimates (truncated at 0) from a design with at least two seeds."""
        if ms.seed is None:
            raise KdbenchError("power: one paired seed cannot separate seed from item variance; need two or more")
        w2 = 1.0 / len(ms.items) ** 2
        resid = tuple(float(r) for r in ms.resid)
        seed = float(ms.seed) - sum(w2 * r / n for r, n in zip(resid, ms.items))
        item = tuple(max(float(i) - r, 0.0) / ms.n_seeds for i, r in zip(ms.item, resid))
        return cls(max(seed, 0.0), item, resid, ms.items)

    def mean_squares(self, n_seeds: int, item_factor: float) -> MeanSquares:
        """The expected mean squares of a design with `n_seeds` seeds and `item_factor` x the items per task."""
        items = tuple(max(2, round(item_factor * n)) for n in self.items)
        w2 = 1.0 / len(items) ** 2
        seed = self.seed + sum(w2 * r / n for r, n in zip(self.resid, items))
        item = tuple(r + n_seeds * b for r, b in zip(self.resid, self.item))
        return MeanSquares(n_seeds, items, np.float64(seed), tuple(map(np.float64, item)),
                           tuple(map(np.float64, self.resid)))

    def mde(self, n_seeds: int, item_factor: float, cfg: StatsConfig) -> float:
        """MDE in points of the overall difference for that design."""
        est = self.mean_squares(n_seeds, item_factor).estimate(np.float64(0))
        return 100 * float(est.mde(1 - cfg.ci, cfg.power))


def headline_components(results_dir: Path, cfg: StatsConfig) -> tuple[Components, int]:
    """(components of candidate minus reference overall, paired seeds) from `<results>/eval/**/results.json`."""
    eval_dir = Path(results_dir) / "eval"
    names = sorted(str(p.parent.relative_to(eval_dir)) for p in eval_dir.rglob("results.json"))
    wanted = [m for m in report.model_evals(Path(results_dir), [n for n in names if n.startswith("students/")])
              if m.arm in (cfg.reference_arm, cfg.candidate_arm)]
    if not wanted:
        raise KdbenchError(f"power: no evaluations of arms {cfg.reference_arm!r} or {cfg.candidate_arm!r} in {eval_dir}")
    evals, tasks = report.load_evals(wanted)
    items = report.item_frame(wanted, evals, tasks, cfg.metric)
    diffs = stats.difference_matrices(items, cfg.candidate_arm, cfg.reference_arm)
    if not diffs:
        raise KdbenchError(f"power: arms {cfg.candidate_arm!r} and {cfg.reference_arm!r} share no evaluated seed")
    _, ms = stats.mean_squares(diffs)
    return Components.from_mean_squares(ms), ms.n_seeds


def plan(components: Components, n_seeds: int, target: float, cfg: StatsConfig) -> str:
    """A table of MDE by seeds and item multiplier, then the fewest seeds and items reaching `target` points."""
    head = "seeds  " + "  ".join(f"items x{f:<4g}" for f in ITEM_FACTORS)
    rows = [f"{s:>5}  " + "  ".join(f"{components.mde(s, f, cfg):>10.2f}" for f in ITEM_FACTORS) for s in SEEDS]
    seeds = next((s for s in range(2, MAX_SEEDS + 1) if components.mde(s, 1, cfg) <= target), None)
    factor = next((f for f in ITEM_SEARCH if components.mde(n_seeds, f, cfg) <= target), None)
    items = "+".join(map(str, components.items))
    return "\n".join([
        f"MDE (points of {cfg.metric}, {cfg.power:.0%} power, two-sided alpha {1 - cfg.ci:.2g}) of "
        f"{cfg.candidate_arm} - {cfg.reference_arm} overall; now {n_seeds} seeds, items per task {items}: "
        f"MDE {components.mde(n_seeds, 1, cfg):.2f}",
        f"variance components (points^2): seed {1e4 * components.seed:.3g}; item per task "
        + ", ".join(f"{1e4 * b:.3g}" for b in components.item) + "; residual per task "
        + ", ".join(f"{1e4 * r:.3g}" for r in components.resid),
        head, *rows,
        f"target MDE {target:g}: at the current items, "
        + (f"{seeds} seeds" if seeds else f"not reached by {MAX_SEEDS} seeds (items limit it)")
        + f"; at {n_seeds} seeds, "
        + (f"{factor} x the items" if factor else f"not reached by {ITEM_SEARCH[-1]} x the items (seeds limit it)"),
    ])
