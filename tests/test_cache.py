"""kdbench.cache.store: bit-exact round trip, verification, staleness, resume, top-k fidelity.

    .venv/bin/python -m pytest tests/test_cache.py -v
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from kdbench import KdbenchError
from kdbench.cache import store as cache_mod
from kdbench.schema.arms import ArmConfig, Capture
from kdbench.schema.config import CacheConfig, ArchConfig
from kdbench.cache.compact import quantise
from kdbench.cache.store import TeacherCache, pack_uint24, stored_ids, unpack_uint24
from kdbench.cache.capture import OnlineTeacher, fidelity, reconstruction_kl, topk, topk_targets, write_teacher_cache
from kdbench.io import read_json
from kdbench.models.causal_lm import build_model, forward_taps

from conftest import flip_byte

V, T, N = 61, 12, 10
CAPTURE = Capture(hidden=(1, 3), attentions=(1, 3), qkv=(1, 3))
CFG = CacheConfig(top_k=8, shard_seqs=4, batch_size=3)
INT8 = dataclasses.replace(CFG, hidden_dtype="int8")
IDENTITY = {"teacher_sha256": "t" * 64, "vocabulary_sha256": "k" * 64, "tokens_sha256": "d" * 64,
            "teacher_layers": 3, "teacher_width": 16}


def teacher(vocab=V):
    return build_model(ArchConfig(n_layer=3, d_model=16, n_head=2), vocab, T, 0, seed=0)


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, V, size=(N, T)).astype(np.uint8)


def write(tmp_path, tokens, name="cache", cfg=CFG, capture=CAPTURE, vocab=V):
    return write_teacher_cache(teacher(vocab), tokens, IDENTITY, cfg, capture, tmp_path / name,
                               tmp_path / f"work-{name}")


def reference(tokens, vocab=V):
    """The teacher's logits and float32 layers (hidden states, packed q/k and q/k/v, derived maps), run over the
    writer's batches (results must not depend on batching luck)."""
    model = teacher(vocab).eval()
    with torch.no_grad():
        chunks = [forward_taps(model, torch.from_numpy(tokens[b : b + 3].astype(np.int64)), **dataclasses.asdict(CAPTURE))
                  for b in range(0, N, 3)]

    def packed(name: str, parts: str) -> torch.Tensor:  # (N, L, T, width)
        return torch.cat([torch.stack([r.packed(parts) for r in getattr(c, name)], 1) for c in chunks])
    return torch.cat([c.logits for c in chunks]), {
        "hidden": torch.cat([c.stacked() for c in chunks]), "attention_qk": packed("attentions", "qk"),
        "qkv": packed("qkv", "qkv"), "maps": torch.cat([c.maps() for c in chunks])}


def test_round_trip_is_bit_exact(tmp_path, tokens):
    write(tmp_path, tokens)
    cache = TeacherCache(tmp_path / "cache", verify=True)
    logits, taps = reference(tokens)
    values, ids, tail = topk_targets(logits, 8)
    idx = np.arange(N)
    assert np.array_equal(cache.gather("input_ids", idx), tokens)
    assert np.array_equal(cache.gather("topk_logprobs", idx), values.half().numpy())
    assert np.array_equal(cache.gather("topk_ids", idx), ids.numpy().astype(np.uint8))
    assert np.array_equal(cache.gather("tail_logprob", idx), tail.numpy())
    assert np.array_equal(cache.gather("hidden", idx), taps["hidden"].bfloat16().view(torch.uint16).numpy())
    qk, qkv = taps["attention_qk"], taps["qkv"]
    assert np.array_equal(cache.gather("attention_qk", idx), qk.half().numpy()) and qk.shape[-1] == 2 * 16
    assert np.array_equal(cache.gather("qkv", idx), qkv.half().numpy()) and qkv.shape[-1] == 3 * 16
    batch = cache.batch(np.array([7, 2, 5]))  # crosses shards, keeps the requested order
    assert torch.equal(batch.input_ids, torch.from_numpy(tokens[[7, 2, 5]].astype(np.int64)))
    assert torch.equal(batch.hidden, taps["hidden"][[7, 2, 5]].bfloat16().float())
    assert batch.hidden.shape == (3, 2, T, 16) and batch.attentions.shape == (3, 2, 2, T, T)
    assert batch.qkv.shape == (3, 2, 3, T, 16)
    exact = taps["maps"][[7, 2, 5]]  # from float32 q/k: the stored float16 rounds them
    torch.testing.assert_close(batch.attentions, exact, atol=2e-3, rtol=0)
    torch.testing.assert_close(batch.attentions.sum(-1), torch.ones(3, 2, 2, T))
    assert not batch.attentions.triu(1).any()


def test_int8_round_trip_gives_the_quantised_hidden_states(tmp_path, tokens):
    """int8 values and float32 scales as `quantise` makes them; a batch holds their product, within half a
    step of the teacher's float32 states; q/k/v stay float16."""
    write(tmp_path, tokens, cfg=INT8)
    cache = TeacherCache(tmp_path / "cache", verify=True)
    _, taps = reference(tokens)
    values, scale = quantise(taps["hidden"])
    idx = np.arange(N)
    assert cache.manifest["shards"][0]["files"]["hidden"]["dtype"] == "int8" and scale.shape == (N, 2, T)
    assert np.array_equal(cache.gather("hidden", idx), values.numpy())
    assert np.array_equal(cache.gather("hidden_scale", idx), scale.numpy())
    assert np.array_equal(cache.gather("qkv", idx), taps["qkv"].half().numpy())
    rows = [7, 2, 5]
    batch = cache.batch(np.array(rows))
    assert torch.equal(batch.hidden, values[rows].float() * scale[rows, ..., None])
    assert ((batch.hidden - taps["hidden"][rows]).abs() <= scale[rows, ..., None] * (0.5 + 1e-5)).all()


def test_int8_quantisation_equals_the_formula():
    """Per row: scale = absmax / 127, values = round(x / scale) (half to even); a zero row stays zero."""
    x = torch.tensor([[0.5, -1.27, 0.004, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 0.5]])
    values, scale = quantise(x)
    assert values.dtype == torch.int8 and values.tolist() == [[50, -127, 0, 0], [0, 0, 0, 0], [127, 42, -85, 21]]
    assert scale.tolist() == pytest.approx([0.01, 1.0, 3 / 127])
    assert cache_mod.converted({"hidden": values, "hidden_scale": scale}, "cpu")["hidden"][1].tolist() == [0.0] * 4
    x = torch.randn(3, 2, 5, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 5)[:, None]
    x[0, 1, 2] = 0.0
    values, scale = quantise(x)
    a = x.numpy()
    want_scale = np.abs(a).max(-1) / np.float32(127)
    want_scale[want_scale == 0] = 1
    want = np.clip(np.rint(a / want_scale[..., None]), -127, 127)
    assert np.array_equal(scale.numpy(), want_scale) and np.array_equal(values.numpy(), want)
    assert np.array_equal(cache_mod.converted({"hidden": values, "hidden_scale": scale}, "cpu")["hidden"].numpy(),
                          want.astype(np.float32) * want_scale[..., None])


def test_uint24_round_trip_is_bit_exact():
    ids = np.array([[0, 255, 256, 0x123456], [65_535, 65_536, 70_000, (1 << 24) - 1]])
    packed = pack_uint24(ids)
    assert packed.dtype == np.uint8 and packed.shape == (2, 4, 3)
    assert packed[0, 3].tolist() == [0x56, 0x34, 0x12] and packed[1, 1].tolist() == [0, 0, 1]  # little-endian
    assert packed[1, 3].tolist() == [255, 255, 255] and packed[1, 0].tolist() == [255, 255, 0]
    unpacked = unpack_uint24(packed)
    assert unpacked.dtype == np.int64 and np.array_equal(unpacked, ids)
    ids = np.random.default_rng(0).integers(0, 1 << 24, size=(5, 7, 3))
    assert np.array_equal(unpack_uint24(pack_uint24(ids)), ids)


@pytest.mark.parametrize("vocab, dtype, nbytes", [(256, "uint8", 1), (257, "uint16", 2), (65_536, "uint16", 2),
                                                  (65_537, "uint24", 3), (1 << 24, "uint24", 3)])
def test_ids_are_stored_in_the_fewest_bytes(vocab, dtype, nbytes):
    arr, name = stored_ids(np.array([[0, vocab - 1]]), vocab)
    assert name == dtype and arr.nbytes == 2 * nbytes
    assert cache_mod._to_torch(arr, name).tolist() == [[0, vocab - 1]]


def test_vocabulary_above_24_bits_is_refused():
    with pytest.raises(KdbenchError, match=r"^vocabulary of 16,777,217 tokens: .* 24 bits, at most 16,777,216 tokens$"):
        stored_ids(np.zeros((1, 2), np.int64), (1 << 24) + 1)


def test_ids_of_a_large_vocabulary_round_trip_in_24_bits(tmp_path):
    vocab = 70_000
    tokens = np.random.default_rng(1).integers(0, vocab, size=(N, T)).astype(np.uint32)
    tokens[0, :4] = [0, 65_535, 65_536, vocab - 1]
    m = write(tmp_path, tokens, capture=Capture(), vocab=vocab)
    files = m["shards"][0]["files"]
    assert files["input_ids"]["dtype"] == files["topk_ids"]["dtype"] == "uint24"
    assert files["topk_ids"]["shape"] == [4, T, 8, 3]
    assert m["bytes_per_token"]["input_ids"] == 3 and m["bytes_per_token"]["topk_ids"] == 3 * 8
    batch = TeacherCache(tmp_path / "cache", verify=True).batch(np.arange(N))
    want = topk_targets(reference(tokens, vocab)[0], 8)[1]
    assert torch.equal(batch.input_ids, torch.from_numpy(tokens.astype(np.int64)))
    assert torch.equal(batch.topk_ids, want) and (want >= 1 << 16).any()


def test_fidelity_reports_the_hidden_states_error_of_each_dtype(tokens):
    """On a small teacher's real activations: int8 within 1% relative RMS error, bfloat16 within 0.5%, and no
    int8 value off by more than half a step (absmax / 254)."""
    got = {dtype: fidelity(teacher(), tokens, 8, dataclasses.replace(CFG, hidden_dtype=dtype), Capture(hidden=(1, 3)),
                           "cpu") for dtype in ("int8", "bfloat16", "float16")}
    assert {fid["hidden_dtype"] for fid in got.values()} == set(got)
    rmse = {dtype: fid["hidden_rel_rmse"] for dtype, fid in got.items()}
    assert 0 < rmse["float16"] < rmse["bfloat16"] < 0.005 and rmse["bfloat16"] < rmse["int8"] < 0.01
    absmax = reference(tokens)[1]["hidden"].abs().amax()
    assert 0 < got["int8"]["hidden_max_abs_err"] <= float(absmax) / 254 * 1.001


def test_manifest_records_identity_and_sizes(tmp_path, tokens):
    m = write(tmp_path, tokens)
    assert m["teacher_sha256"] == IDENTITY["teacher_sha256"] and m["top_k"] == 8
    assert Capture.from_settings(m["settings"]) == CAPTURE and len(m["shards"]) == math.ceil(N / 4)
    assert m["attention_heads"] == {"heads": 2, "kv_heads": 2, "head_dim": 8, "scaling": 8 ** -0.5, "softcap": None,
                                    "window": None}
    logit_bytes = sum(m["bytes_per_token"][c] for c in ("topk_logprobs", "topk_ids", "tail_logprob"))
    assert logit_bytes <= 4 * 8 + 8
    assert m["bytes_per_token"]["attention_qk"] == 2 * 2 * 16 * 2  # L * (q + k) * width * fp16: no T in it
    fid = read_json(tmp_path / "cache" / "fidelity.json")
    assert fid["kl_topk_mean"] > 0 and 0 < fid["tail_mass_mean"] < 1
    assert fid["attention_formula_max_abs_err"] < 1e-5 and 0 < fid["attention_max_abs_err"] < 2e-3
    assert fid["hidden_dtype"] == "bfloat16" and 0 < fid["hidden_rel_rmse"] < 0.005 and fid["hidden_max_abs_err"] > 0


def test_attention_other_than_the_formula_is_refused(tmp_path, tokens, monkeypatch):
    """A teacher whose eager maps are not softmax(cap(q k^T * scale)) under its mask (here: the derivation is
    made to differ) is refused before any shard is written."""
    from kdbench.models import attention

    real = attention.maps
    monkeypatch.setattr(attention, "maps", lambda *args: real(*args).flip(-1))
    with pytest.raises(KdbenchError, match=r"cache: the teacher \(gpt2\): its attention maps are not softmax"):
        write(tmp_path, tokens)
    assert not (tmp_path / "cache").exists()


def test_flipped_byte_is_detected_by_verify(tmp_path, tokens):
    write(tmp_path, tokens)
    shard = tmp_path / "cache" / "00001.hidden.npy"
    flip_byte(shard, -5, 0xFF)
    TeacherCache(tmp_path / "cache")  # sizes still match: only the hash can tell
    with pytest.raises(KdbenchError, match=r"shard 00001 \(00001.hidden.npy\): sha256 mismatch"):
        TeacherCache(tmp_path / "cache", verify=True)


def test_flipped_byte_is_refused_on_first_read(tmp_path, tokens):
    """What a student job sees: batches from intact shards, then the corrupt shard refused by name."""
    write(tmp_path, tokens)
    shard = tmp_path / "cache" / "00001.hidden.npy"
    flip_byte(shard, shard.stat().st_size // 2)
    cache = TeacherCache(tmp_path / "cache")
    first = cache.manifest["shards"][1]["start"]
    cache.batch(np.arange(first))  # shard 0 only: fine
    cache.select(("input_ids", "topk_ids"))
    cache.batch(np.arange(first, first + 2))  # shard 1, but not its hidden states
    cache.select(("input_ids", "hidden"))
    with pytest.raises(KdbenchError, match=r"shard 00001 \(00001.hidden.npy\): crc32 mismatch on first read"):
        cache.batch(np.array([0, first]))


def test_truncated_shard_and_missing_manifest(tmp_path, tokens):
    write(tmp_path, tokens)
    shard = tmp_path / "cache" / "00000.topk_ids.npy"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(KdbenchError, match="00000.topk_ids.npy.*size"):
        TeacherCache(tmp_path / "cache")
    (tmp_path / "cache" / "manifest.json").unlink()
    with pytest.raises(KdbenchError, match="no manifest.json"):
        TeacherCache(tmp_path / "cache")


@pytest.mark.parametrize("expect", [{"teacher_sha256": "x" * 64}, {"top_k": 16}, {"vocabulary_sha256": "y"}])
def test_stale_cache_is_refused(tmp_path, tokens, expect):
    write(tmp_path, tokens)
    key = next(iter(expect))
    with pytest.raises(KdbenchError, match=f"stale: {key}"):
        TeacherCache(tmp_path / "cache", expect=expect)


def test_interrupted_write_resumes_and_matches(tmp_path, tokens, monkeypatch):
    reference = write(tmp_path, tokens, "reference")
    real = cache_mod._ShardWriter.finish
    calls = []

    def dying(writer):
        if writer.index == 1:
            raise KeyboardInterrupt("killed")
        calls.append(writer.index)
        return real(writer)

    monkeypatch.setattr(cache_mod._ShardWriter, "finish", dying)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, tokens)
    assert not (tmp_path / "cache").exists()  # nothing that looks complete
    done = [i for i in range(3) if (tmp_path / "work-cache" / f"{i:05d}.json").exists()]
    assert 0 in done and 1 not in done
    calls.clear()
    monkeypatch.setattr(cache_mod._ShardWriter, "finish", lambda w: calls.append(w.index) or real(w))
    resumed = write(tmp_path, tokens)
    assert calls == [i for i in range(3) if i not in done]  # only the missing shards are recomputed
    strip = lambda m: [{k: f["sha256"] for k, f in s["files"].items()} for s in m["shards"]]
    assert strip(resumed) == strip(reference)
    fidelity = lambda name: json.loads((tmp_path / name / "fidelity.json").read_text())
    assert fidelity("cache") == fidelity("reference")  # measured on the same sample after the resume
    TeacherCache(tmp_path / "cache", verify=True)  # streamed hashes equal the files' hashes


def test_work_dir_of_another_teacher_is_discarded(tmp_path, tokens):
    write(tmp_path, tokens, cfg=CacheConfig(top_k=4, shard_seqs=4))
    m = write(tmp_path, tokens)  # k changed: old shards must not be reused
    assert m["top_k"] == 8 and TeacherCache(tmp_path / "cache", verify=True).gather("topk_ids", np.arange(2)).shape[-1] == 8


@pytest.mark.parametrize("vocab, k", [(1024, 32), (50257, 32), (3001, 7), (600, 1), (64, 64)])
def test_two_level_topk_equals_torch(vocab, k):
    torch.manual_seed(vocab)
    x = torch.randn(3, 5, vocab)
    x[0, 0, -1] = 100.0  # the best entry in the last, partial block
    values, ids = topk(x, k)
    want = x.topk(k, dim=-1)
    assert torch.equal(values, want.values) and torch.equal(ids, want.indices)
    ties = torch.randint(0, 4, (2, vocab)).float()  # heavy ties: the same values, ids of equal entries
    values, ids = topk(ties, k)
    assert torch.equal(values, ties.topk(k, dim=-1).values) and torch.equal(ties.gather(-1, ids), values)
    assert all(len(set(row.tolist())) == k for row in ids)  # k distinct entries


def test_topk_equal_vocab_is_lossless():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    values, ids, tail = topk_targets(logits, 7)
    assert torch.all(tail == float("-inf"))
    assert torch.allclose(values.exp().sum(-1), torch.ones(2, 5))
    assert torch.all(reconstruction_kl(logits, values, ids, tail) == 0)
    full = torch.log_softmax(logits, -1)
    assert torch.allclose(full.gather(-1, ids), values)


def test_tail_mass_matches_complement():
    logits = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(1))
    values, ids, tail = topk_targets(logits, 5)
    assert torch.allclose(tail.exp(), 1 - values.exp().sum(-1), atol=1e-6)
    p = torch.softmax(logits, -1)
    q = ((1 - p.topk(5, -1).values.sum(-1, keepdim=True)) / 45).expand_as(p).clone()  # an even tail over 50 - 5
    q.scatter_(-1, ids, p.gather(-1, ids))
    want = torch.nn.functional.kl_div(q.log(), p, reduction="none").sum(-1)
    assert torch.allclose(reconstruction_kl(logits, values, ids, tail), want, atol=1e-5)
    logits[..., -1] = float("-inf")  # a token the teacher never emits counts 0 in the KL, not NaN
    assert torch.isfinite(reconstruction_kl(logits, *topk_targets(logits, 5))).all()
    confident = 200 * torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(2))
    values, ids, tail = topk_targets(confident, 40)  # the mass outside the top 40 underflows to 0: tail -inf
    assert torch.isinf(tail).any()
    kl = reconstruction_kl(confident, values, ids, tail)
    assert torch.isfinite(kl).all() and (kl >= -1e-6).all()


def test_select_serves_only_what_an_arm_reads(tmp_path, tokens):
    write(tmp_path, tokens, capture=Capture(hidden=(1, 3)))
    cache = TeacherCache(tmp_path / "cache")
    cache.select(ArmConfig(terms={"ce": 0.5, "fkl": 0.5}).components)
    batch = cache.batch(np.arange(2))
    assert batch.topk_ids is not None and batch.hidden is None
    with pytest.raises(KdbenchError, match="holds no attention_qk"):
        cache.select(ArmConfig(terms={"attn_kl": 1.0}).components)


def test_hidden_scale_is_read_only_with_the_hidden_states(tmp_path, tokens):
    write(tmp_path, tokens, cfg=INT8, capture=Capture(hidden=(1, 3)))
    shard = tmp_path / "cache" / "00001.hidden_scale.npy"
    flip_byte(shard, -1)
    cache = TeacherCache(tmp_path / "cache")
    first = cache.manifest["shards"][1]["start"]
    cache.select(ArmConfig(terms={"ce": 0.5, "fkl": 0.5}).components)
    assert cache.batch(np.arange(first, first + 2)).hidden is None  # shard 1, neither its hidden states nor scales
    cache.select(("input_ids", "hidden"))
    with pytest.raises(KdbenchError, match=r"shard 00001 \(00001.hidden_scale.npy\): crc32 mismatch"):
        cache.batch(np.array([first]))


@pytest.mark.parametrize("cfg", [CFG, INT8, dataclasses.replace(CFG, layer_rank=6),
                                 dataclasses.replace(INT8, layer_rank={"attention_qk": 6, "qkv": 9})],
                         ids=["bfloat16", "int8", "compact", "compact q/k/v, int8 hidden"])
@pytest.mark.parametrize("idx", [[3, 4, 5], [7, 2, 9, 0]], ids=["writer's batch", "a training batch"])
def test_online_teacher_gives_the_cached_targets_and_losses(tmp_path, tokens, idx, cfg):
    """Online targets are the cache's: bit-equal on the batch the writer ran, and on any other batch within
    the storage dtypes' rounding (the teacher's float sums may differ in the last bit with the batch's rows)."""
    from kdbench.losses import Targets
    from kdbench.train.loop import Objective

    write(tmp_path, tokens, cfg=cfg)
    idx = np.array(idx)
    cached = TeacherCache(tmp_path / "cache").batch(idx)
    online = OnlineTeacher(teacher(), tokens, cfg.top_k, cfg, CAPTURE, "cpu").batch(idx)
    exact = len(idx) == 3
    for f in dataclasses.fields(Targets):
        a, b = getattr(cached, f.name), getattr(online, f.name)
        assert a.shape == b.shape and a.dtype == b.dtype, f.name
        if exact or f.name in ("input_ids", "topk_ids"):
            assert torch.equal(a, b), f.name
        else:
            torch.testing.assert_close(a, b, atol=2e-3, rtol=8e-3)  # bfloat16's rounding step is 2^-8
    arm = ArmConfig(terms={"ce": 1.0, "fkl": 1.0, "hidden_mse": 1.0, "attn_kl": 1.0, "relation": 1.0},
                    temperature=2.0, relation_heads=2, layer_map=[[1, 1], [2, 3]])
    student = build_model(ArchConfig(n_layer=2, d_model=8, n_head=2), V, T, 0, seed=1)
    objective = Objective(arm, arm.pairs(2, 3), CAPTURE, student, 16, seed=0)
    mask = torch.ones(len(idx), T, dtype=torch.bool)
    with torch.no_grad():
        _, from_cache = objective(student, cached, mask)
        _, from_online = objective(student, online, mask)
    for name, value in from_cache.items():
        if exact:
            assert torch.equal(value, from_online[name]), name
        else:
            torch.testing.assert_close(value, from_online[name], rtol=1e-3, atol=1e-5)
