"""kdbench.snake.run_job inside a real Snakemake job: a failure in a library is one line naming the rule, the model
and the log, and the log holds the traceback (never an empty log).

    .venv/bin/python -m pytest tests/test_snake.py -q   (about 10 s)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = """
rule attend:
    input: "teacher"
    output: "out.txt"
    log: "logs/attend.log"
    script: "attend.py"
"""
# sdpa cannot soft-cap: transformers raises a ValueError of several lines' context
SCRIPT = """
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from kdbench.snake import run_job

x = torch.zeros(1, 2, 3, 4)
run_job(snakemake, lambda: sdpa_attention_forward(torch.nn.Module(), x, x, x, None, softcap=50.0))
"""


def test_a_failure_inside_transformers_is_one_line_with_the_traceback_in_the_log(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "attend.py").write_text(SCRIPT)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text(json.dumps({"model_type": "gemma2"}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    done = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--cores", "1", "--directory",
                           str(tmp_path), "--snakefile", str(tmp_path / "Snakefile")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode != 0
    line = ("kdbench error in rule attend (model: teacher (gemma2)): ValueError: `sdpa` attention does not support "
            "`softcap`. Try using `eager`")
    assert line in done.stderr and "(traceback in logs/attend.log)" in done.stderr
    log = (tmp_path / "logs" / "attend.log").read_text()
    assert log.startswith("Traceback") and "sdpa_attention.py" in log and "ValueError" in log
    assert not (tmp_path / "out.txt").exists()
