"""kdbench.schema.plan: the planner's bytes against a real cache, auto mode, the disk limit. CPU, a few seconds.

    .venv/bin/python -m pytest tests/test_plan.py -v
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kdbench import KdbenchError
from kdbench.schema.arms import capture_for
from kdbench.cache.capture import write_teacher_cache
from kdbench.cli import main
from kdbench.schema.experiment import load_experiment
from kdbench.models.causal_lm import build_model, describe, describe_config
from kdbench.schema.plan import arch_shape, described_shape, id_bytes, plan, teacher_mode

REPO = Path(__file__).resolve().parents[1]
V, T = 300, 12  # ids above 255: two bytes each
CONFIG = {"tokenizer": {"vocab_size": V}, "data": {"seq_len": T}, "seeds": [0],
          "teacher": {"arch": {"family": "gpt2", "n_layer": 3, "d_model": 16, "n_head": 2}},
          "student": {"arch": {"family": "gpt2", "n_layer": 2, "d_model": 8, "n_head": 2},
                      "train": {"tokens": 118, "batch_size": 2}},
          "cache": {"top_k": 8, "shard_seqs": 4, "batch_size": 3},
          "arms": {"attn": {"terms": {"fkl": 1.0, "hidden_mse": 1.0, "attn_kl": 1.0}},
                   "rel": {"terms": {"fkl": 1.0, "relation": 1.0}, "layer_map": "last", "relation_heads": 2}},
          "stats": {"reference_arm": "attn", "candidate_arm": "rel"}}
IDENTITY = {"teacher_sha256": "t" * 64, "vocabulary_sha256": "k" * 64, "tokens_sha256": "d" * 64,
            "teacher_layers": 3, "teacher_width": 16}


@pytest.mark.parametrize("vocab, hidden_dtype, rank", [(V, "bfloat16", 0), (V, "int8", 0), (70_000, "int8", 0),
                                                       (V, "bfloat16", 5), (V, "bfloat16", 40),
                                                       (V, "int8", {"hidden": 5, "qkv": 40})])
def test_planned_bytes_match_a_written_cache(tmp_path, vocab, hidden_dtype, rank):
    exp = load_experiment({**CONFIG, "tokenizer": {"vocab_size": vocab},
                           "cache": {**CONFIG["cache"], "hidden_dtype": hidden_dtype, "layer_rank": rank}})
    p = plan(exp, {})
    ranks = {name: exp.cache.rank(name) for name in ("hidden", "attention_qk", "qkv")}
    assert p.n_seqs == 10 and p.layers == {"hidden": 2, "attention_qk": 2, "qkv": 1}
    assert ("hidden_scale" in p.bytes_per_token) == (hidden_dtype == "int8" or ranks["hidden"] > 0)
    assert ("qkv_scale" in p.bytes_per_token) == (ranks["qkv"] > 0) and (p.basis_bytes > 0) == any(ranks.values())
    if ranks["hidden"]:  # L (min(rank, width) + 4): widths 16 (hidden), 32 (q|k), 48 (q|k|v)
        assert p.bytes_per_token["hidden"] + p.bytes_per_token["hidden_scale"] == 2 * (min(ranks["hidden"], 16) + 4)
    if ranks["qkv"]:
        assert p.bytes_per_token["qkv"] == min(ranks["qkv"], 48)
    if not ranks["attention_qk"]:  # stored exact, float16
        assert p.bytes_per_token["attention_qk"] == 2 * 32 * 2 and "attention_qk_scale" not in p.bytes_per_token
    teacher = build_model(exp.teacher.arch, vocab, T, 0, seed=0)
    tokens = np.random.default_rng(0).integers(0, vocab, size=(p.n_seqs, T)).astype(np.uint32)
    manifest = write_teacher_cache(teacher, tokens, IDENTITY, exp.cache, capture_for(exp.arms, 2, 3),
                                   tmp_path / "cache", tmp_path / "work")
    assert manifest["bytes_per_token"] == pytest.approx(p.bytes_per_token, rel=0.02)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "cache").glob("*.npy"))
    assert on_disk == pytest.approx(p.cache_bytes, rel=0.02)


def test_id_bytes_and_the_24_bit_limit():
    assert [id_bytes(v) for v in (256, 257, 65_536, 65_537, 1 << 24)] == [1, 2, 2, 3, 3]
    with pytest.raises(KdbenchError, match=r"^vocabulary of 16,777,217 tokens: .*24 bits"):
        id_bytes((1 << 24) + 1)


def test_described_shape_of_a_built_model_matches_its_arch():
    exp = load_experiment({**CONFIG, "teacher": {"arch": {"family": "gpt_neox", "n_layer": 2, "d_model": 64,
                                                          "n_head": 4}}})
    built = described_shape(describe(build_model(exp.teacher.arch, V, T, 0, seed=0)))
    planned = arch_shape(exp.teacher.arch, V)
    assert (built.n_layer, built.width, built.heads, built.head_dim) == (2, 64, 4, 16)
    assert built.compute_params == pytest.approx(planned.compute_params, rel=0.03)  # biases and norms aside


def test_auto_goes_online_above_max_gb_and_cache_mode_is_refused():
    assert teacher_mode(load_experiment({**CONFIG, "teacher": {**CONFIG["teacher"], "mode": "auto"}}), {}) == "cache"
    tight = {**CONFIG, "cache": {**CONFIG["cache"], "max_gb": 1e-6}}
    assert teacher_mode(load_experiment({**tight, "teacher": {**CONFIG["teacher"], "mode": "auto"}}), {}) == "online"
    with pytest.raises(KdbenchError, match=r"^cache.max_gb: the planned teacher cache is"):
        teacher_mode(load_experiment(tight), {})


def test_plan_command_prints_the_default(capsys):
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "bytes/token" in out and "total in mode cache" in out and "GPU-hours" in out and "reads B/token" in out


def test_each_arm_is_priced_by_what_it_reads():
    p = plan(load_experiment(CONFIG), {})
    logits = sum(p.bytes_per_token[c] for c in ("input_ids", "topk_logprobs", "topk_ids", "tail_logprob"))
    assert p.arm_bytes_per_token["attn"] == logits + p.bytes_per_token["hidden"] + p.bytes_per_token["attention_qk"]
    assert p.arm_bytes_per_token["rel"] == logits + p.bytes_per_token["qkv"]


def test_compaction_brings_the_pythia_preset_under_its_limit():
    """The preset's layer targets in full, every arm of the default, need 3.7 TB at 200M tokens, above
    cache.max_gb (auto goes online); at layer_rank 128 every component costs L (128 + 4) bytes a token and the
    cache fits."""
    from kdbench.schema.checks import load_config

    cfg = {**load_config([REPO / "config" / "config.yaml", REPO / "config" / "presets" / "pythia.yaml"]),
           "run_arms": []}
    shapes = {"teacher": describe_config(REPO / "config" / "models" / "EleutherAI" / "pythia-410m")}
    full = plan(load_experiment({**cfg, "cache": {**cfg["cache"], "layer_rank": 0}}), shapes)
    small = plan(load_experiment({**cfg, "cache": {**cfg["cache"], "layer_rank": 128}}), shapes)
    assert sum(full.bytes_per_token.values()) == 18_566 and full.mode == "online"
    assert sum(small.bytes_per_token.values()) == 134 + 5 * (128 + 4) and small.mode == "cache"
    assert small.cache_bytes < small.max_gb * 1e9
