"""The benchmarks run end to end at a tiny size and report every promised key; ratios pair rounds."""

from __future__ import annotations

import math

import pytest

from kdbench import bench


def test_paired_ratio_is_the_median_of_back_to_back_ratios():
    """A slow phase that hits both contenders in one round does not move the ratio."""
    times = {"a": [1.0, 3.0, 1.0, 1.0], "b": [2.0, 6.0, 2.0, 9.0]}  # round 2 slow for both; round 4 only for b
    assert bench._paired(times, "a", "b") == pytest.approx(2.0)


def test_race_alternates_the_order_of_contenders():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("x", "y", "z")}
    times = bench._race(fns, rounds=2)
    assert calls[3:] == ["x", "y", "z", "z", "y", "x"]  # after one warm-up call each
    assert {name: len(t) for name, t in times.items()} == {"x": 2, "y": 2, "z": 2}


@pytest.mark.slow  # times real training steps / cache writes
def test_train_benchmark_reports_rates_and_ratios():
    result = bench.bench_train(None, n_seqs=32, steps=1, rounds=2)
    for key in ("ce_tokens_per_s", "cached_kd_tokens_per_s", "online_kd_tokens_per_s", "cached_logit_tokens_per_s",
                "cached_hidden_tokens_per_s", "cached_kd_over_ce", "cached_kd_over_online_kd",
                "cached_logit_over_ce", "cached_hidden_over_ce"):
        assert math.isfinite(result[key]) and result[key] > 0, key


@pytest.mark.slow  # times real training steps / cache writes
def test_cache_benchmark_reports_the_promised_keys():
    result = bench.bench_cache(None, n_seqs=64, rounds=2)
    k = result["k"]
    assert result["logit_bytes_per_token"] == 4 * k + 4  # fp16 values + uint16 ids + fp32 tail
    assert 0 < result["write_over_forward"] and 0 < result["read_share_of_step"] < 1
    assert [s["k"] for s in result["k_sweep"]] == [8, 16, 32, 64, 128]
    kls = [s["kl_topk"] for s in result["k_sweep"]]
    assert all(math.isfinite(kl) and kl > -1e-6 for kl in kls)
    assert result["kl_topk"] == kls[[8, 16, 32, 64, 128].index(k)]


def test_gpu_benchmark_runs_its_code_on_cpu_at_tiny_shapes(tmp_path):
    """`make gpu-check`'s measurement, on CPU: a tiny teacher config stands in for the real preset's."""
    from transformers import GPTNeoXConfig

    GPTNeoXConfig(vocab_size=300, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=32).save_pretrained(tmp_path / "teacher")
    preset = tmp_path / "tiny.yaml"
    preset.write_text(f"""
teacher: {{source: {tmp_path / 'teacher'}}}
student: {{arch: {{family: gpt_neox, n_layer: 2, d_model: 32, n_head: 2}}, train: {{batch_size: 4}}}}
data: {{seq_len: 16}}
evaluation: {{tasks: [arc_easy]}}
""")
    result = bench.bench_gpu(preset, steps=2, rounds=1, device="cpu")
    assert result["cached_tokens_per_s"] > 0 and result["online_tokens_per_s"] > 0
    assert 0 < result["cached_student_mfu"] < 1 and result["online_over_cached"] > 0


def test_fidelity_sweep_prices_and_measures_every_option():
    """Each option's layer bytes per token and its loss/gradient errors: compact bytes grow with the rank (up to the
    width), and a rank at the full width loses less than rank 16."""
    import numpy as np

    from kdbench.models.causal_lm import build_model
    from kdbench.schema.arms import Capture
    from kdbench.schema.config import ArchConfig, CacheConfig

    teacher = build_model(ArchConfig(n_layer=2, d_model=32, n_head=2), 100, 16, 0, seed=0).eval()
    tokens = np.random.default_rng(0).integers(0, 100, size=(16, 16))
    cfg = CacheConfig(batch_size=8, layer_rank=128)  # a compact preset still gets its uncompacted options measured
    result = bench._sweep(teacher, tokens, cfg, Capture(hidden=(1, 2), attentions=(2,), qkv=(2,)), 8)
    assert list(result) == ["bfloat16", "int8", *(f"rank{r}" for r in bench.RANKS), "per_component"]
    size = {name: r["layer_bytes_per_token"] for name, r in result.items()}
    assert size["rank16"] == 2 * 20 + 20 + 20 and size["rank256"] == 2 * 36 + 68 + 100  # L (min(r, width) + 4)
    assert size["per_component"] == sum(n * (min(bench.PER_COMPONENT[c], w) + 4) for c, n, w in
                                         (("hidden", 2, 32), ("attention_qk", 1, 64), ("qkv", 1, 96)))
    assert size["bfloat16"] == 2 * 64 + 128 + 192 and size["int8"] == 2 * 36 + 128 + 192
    for component in ("hidden", "attention_qk", "qkv"):
        low, full = result["rank16"]["layers"][component], result["rank256"]["layers"][component]
        assert all(0 < full[key] < low[key] for key in ("rel_rmse", "loss_rel_err", "grad_rel_err")), component
