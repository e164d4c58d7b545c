"""kdbench.cache.compact: layer targets as int8 coefficients in per-layer bases, written, read and measured.

    .venv/bin/python -m pytest tests/test_compact.py -v
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kdbench import KdbenchError
from kdbench.cache import compact
from kdbench.cache.capture import OnlineTeacher, write_teacher_cache
from kdbench.cache.store import TeacherCache
from kdbench.io import read_json
from kdbench.models.causal_lm import build_model
from kdbench.schema.arms import Capture
from kdbench.schema.config import ArchConfig, CacheConfig, ConfigError, build

from conftest import flip_byte

V, T, N = 61, 12, 10
CAPTURE = Capture(hidden=(1, 3), attentions=(1, 3), qkv=(3,))
CFG = CacheConfig(top_k=8, shard_seqs=4, batch_size=3, layer_rank=6)
IDENTITY = {"teacher_sha256": "t" * 64, "vocabulary_sha256": "k" * 64, "tokens_sha256": "d" * 64,
            "teacher_layers": 3, "teacher_width": 16}


def teacher():
    return build_model(ArchConfig(n_layer=3, d_model=16, n_head=2), V, T, 0, seed=0)


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, V, size=(N, T)).astype(np.uint8)


def write(tmp_path, tokens, cfg=CFG):
    return write_teacher_cache(teacher(), tokens, IDENTITY, cfg, CAPTURE, tmp_path / "cache", tmp_path / "work")


def test_a_basis_of_the_data_rank_reconstructs_it():
    """Vectors of rank 3 about a mean: 3 orthonormal directions, all the variance, and decode(encode(x)) within
    int8 rounding; a smaller rank explains less."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 50, 3, generator=g) @ torch.randn(2, 3, 20, generator=g) + 5 * torch.randn(2, 1, 20, generator=g)
    basis = compact.fit(x, 3)
    assert basis.shape == (2, 4, 20)
    torch.testing.assert_close(basis[:, 1:] @ basis[:, 1:].transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5,
                               rtol=0)
    assert compact.explained(x, basis) == pytest.approx([1.0, 1.0], abs=1e-5)
    values, scale = compact.encode(x, basis)
    assert values.dtype == torch.int8 and values.shape == (4, 2, 50, 3) and scale.shape == (4, 2, 50)
    err = compact.decode(values.float(), scale, basis) - x
    assert err.norm() / (x - basis[:, :1]).norm() < 0.01
    assert all(e < 0.99 for e in compact.explained(x, compact.fit(x, 1)))
    assert compact.fit(x, 100).shape == (2, 21, 20)  # rank capped at the width


def test_compact_cache_stores_coefficients_and_reads_decoded_vectors(tmp_path, tokens):
    m = write(tmp_path, tokens)
    assert m["format"] == "kdbench-cache/7"
    widths = {"hidden": 16, "attention_qk": 32, "qkv": 48}
    layers = {"hidden": 2, "attention_qk": 2, "qkv": 1}
    for name, w in widths.items():
        assert m["bases"][name]["shape"] == [layers[name], 1 + 6, w] and (tmp_path / "cache" / f"{name}.basis.npy").exists()
        assert m["bytes_per_token"][name] == layers[name] * 6 and m["bytes_per_token"][f"{name}_scale"] == layers[name] * 4
        assert m["shards"][0]["files"][name]["dtype"] == "int8"
    cache = TeacherCache(tmp_path / "cache", verify=True)
    idx = np.array([7, 2, 5])
    batch = cache.batch(idx)
    coef = torch.from_numpy(cache.gather("hidden", idx)).float()
    scale = torch.from_numpy(cache.gather("hidden_scale", idx))
    assert torch.equal(batch.hidden, compact.decode(coef, scale, cache.bases["hidden"]))
    assert batch.hidden.shape == (3, 2, T, 16) and batch.attentions.shape == (3, 2, 2, T, T)
    assert batch.qkv.shape == (3, 1, 3, T, 16)
    torch.testing.assert_close(batch.attentions.sum(-1), torch.ones(3, 2, 2, T))  # decoded q/k still give maps


def test_fidelity_json_measures_loss_and_gradient_per_component(tmp_path, tokens):
    """At the full width the only loss is int8 rounding; at rank 1 every component's targets, loss and gradient
    are further off."""
    write(tmp_path, tokens, dataclasses.replace(CFG, layer_rank=48))
    full = read_json(tmp_path / "cache" / "fidelity.json")
    write(tmp_path, tokens, dataclasses.replace(CFG, layer_rank=1))
    low = read_json(tmp_path / "cache" / "fidelity.json")
    assert set(full["layers"]) == {"hidden", "attention_qk", "qkv"}
    for name in full["layers"]:
        assert full["explained_variance"][name] == pytest.approx([1.0] * len(full["explained_variance"][name]),
                                                                  abs=1e-4)
        assert all(0 < v < 0.9 for v in low["explained_variance"][name])
        for key in ("rel_rmse", "loss_rel_err", "grad_rel_err"):
            assert 0 < full["layers"][name][key] < low["layers"][name][key], (name, key)
        assert full["layers"][name]["rel_rmse"] < 0.02 and full["layers"][name]["grad_rel_err"] < 0.05
    assert full["hidden_dtype"] == "int8 coefficients" and full["layer_rank"] == 48


def test_the_online_teacher_fits_the_cache_jobs_bases(tmp_path, tokens):
    """The same first batch, so the same bases (targets and losses: tests/test_cache.py's online test)."""
    write(tmp_path, tokens)
    source = OnlineTeacher(teacher(), tokens, 8, CFG, CAPTURE, "cpu")
    cached = TeacherCache(tmp_path / "cache").bases
    assert set(source.bases) == set(cached) and all(torch.equal(source.bases[n], b) for n, b in cached.items())


def test_a_corrupt_or_missing_basis_is_refused(tmp_path, tokens):
    write(tmp_path, tokens)
    path = tmp_path / "cache" / "hidden.basis.npy"
    flip_byte(path, -1)
    with pytest.raises(KdbenchError, match=r"hidden.basis.npy\): checksum mismatch"):
        TeacherCache(tmp_path / "cache")
    path.unlink()
    with pytest.raises(KdbenchError, match=r"hidden.basis.npy\): basis file missing"):
        TeacherCache(tmp_path / "cache")


def test_resume_in_other_bases_starts_over(tmp_path, tokens, monkeypatch):
    """Shards encoded in other bases (a refit that differs, same settings) are never resumed: every shard is
    rewritten."""
    from kdbench.cache import capture as capture_mod
    from kdbench.cache import store as store_mod

    real_finish, real_fit, calls = store_mod._ShardWriter.finish, compact.fit, []

    def dying(writer):
        if writer.index == 1:
            raise KeyboardInterrupt("killed")
        return real_finish(writer)

    monkeypatch.setattr(store_mod._ShardWriter, "finish", dying)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, tokens)
    assert (tmp_path / "work" / "00000.json").exists()
    monkeypatch.setattr(store_mod._ShardWriter, "finish", lambda w: calls.append(w.index) or real_finish(w))
    monkeypatch.setattr(capture_mod, "fit", lambda x, rank: real_fit(x, rank) * 1.001)
    write(tmp_path, tokens)
    assert calls == [0, 1, 2]
    TeacherCache(tmp_path / "cache", verify=True)


def test_negative_rank_or_an_unknown_component_is_refused():
    with pytest.raises(ConfigError, match=r"cache.layer_rank: -1 for hidden must be >= 0"):
        build(CacheConfig, {"layer_rank": -1}, "cache")
    with pytest.raises(ConfigError, match=r"cache.layer_rank: -2 for qkv must be >= 0"):
        build(CacheConfig, {"layer_rank": {"qkv": -2}}, "cache")
    with pytest.raises(ConfigError, match=r"^cache.layer_rank: unknown component 'attentions'; allowed: hidden, "
                                          r"attention_qk, qkv$"):
        build(CacheConfig, {"layer_rank": {"attentions": 8}}, "cache")


def test_per_component_ranks_compact_only_the_named_components(tmp_path, tokens):
    m = write(tmp_path, tokens, dataclasses.replace(CFG, layer_rank={"hidden": 4, "qkv": 9}))
    assert set(m["bases"]) == {"hidden", "qkv"}
    assert m["bases"]["hidden"]["shape"] == [2, 1 + 4, 16] and m["bases"]["qkv"]["shape"] == [1, 1 + 9, 48]
    files = m["shards"][0]["files"]
    assert files["hidden"]["dtype"] == files["qkv"]["dtype"] == "int8" and files["attention_qk"]["dtype"] == "float16"
    assert "attention_qk_scale" not in files
    fidelity = read_json(tmp_path / "cache" / "fidelity.json")
    assert set(fidelity["explained_variance"]) == {"hidden", "qkv"}
    assert fidelity["layers"]["attention_qk"]["loss_rel_err"] < 1e-3  # float16: exact up to rounding
    batch = TeacherCache(tmp_path / "cache", verify=True).batch(np.array([1, 8]))
    assert batch.hidden.shape == (2, 2, T, 16) and batch.attentions.shape == (2, 2, 2, T, T)
