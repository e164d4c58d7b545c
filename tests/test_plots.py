"""Figures: legends name each arm once."""
from __future__ import annotations

import pandas as pd

from kdbench.analysis import plots


def test_paired_legend_lists_each_arm_once(monkeypatch, tmp_path):
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_base: saved.append(fig))
    # ce: no significant row (only hollow markers); hidden: mixed filled and hollow markers
    comparisons = pd.DataFrame({
        "arm": ["ce", "ce", "hidden", "hidden"],
        "task": ["kdb_a", "overall", "kdb_a", "overall"],
        "diff": [1.0, 0.5, 9.0, 2.0],
        "ci_lo": [-2.0, -1.0, 6.0, -1.0],
        "ci_hi": [4.0, 2.0, 12.0, 5.0],
        "p_adj": [0.9, 0.8, 0.01, 0.3],
    })
    plots.paired_figure(comparisons, ["teacher", "ce", "hidden"], "logit", 0.05, tmp_path / "paired")
    (fig,) = saved
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["ce", "hidden"]
    plots.plt.close(fig)
