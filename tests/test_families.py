"""kdbench.models.causal_lm on any decoder-only causal LM: blocks, hidden states, and queries, keys and values as the
attention receives them (grouped- and multi-query attention included), on tiny random stand-ins of twelve families.

Two checks need no family knowledge: the attention maps derived from the recorded q and k must equal the
model's own eager maps (rotary embeddings, Gemma's soft-capping, sliding windows and head size included), and
per query head those maps times the recorded values must equal what the block feeds its output projection.
Families whose attention bypasses transformers' attention interface (Falcon) or adds ALiBi (BLOOM, MPT) are refused,
naming the family and the feature. The teachers users bring (Gemma-2, Gemma-3, BLOOM) run end to end: saved with
a tokenizer, cached, and distilled into a student by the logit and hidden arms; the attention arms either run
too or are refused in one line when the workflow parses.

    .venv/bin/python -m pytest tests/test_families.py -q   (CPU, offline, about 60 s)
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kdbench import KdbenchError
from kdbench.cache.capture import cache_teacher
from kdbench.data.tokens import prepare
from kdbench.io import read_json
from kdbench.schema.arms import ArmConfig
from kdbench.schema.checks import check_models
from kdbench.schema.config import ArchConfig, CacheConfig, DataConfig, StudentConfig, TrainConfig, build
from kdbench.schema.experiment import load_experiment
from kdbench.train.student import init_student, train_student
from kdbench.models import attention
from kdbench.models.causal_lm import blocks, check_attention_formula, describe, forward_taps, load_tokenizer, save_model

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, vocab_size=96,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)
# family -> (config overrides, output projection in the block, kv heads)
FAMILIES = {
    "gpt2": (dict(n_embd=32, n_layer=3, n_head=4, n_positions=64), "attn.c_proj", 4),
    "llama": (dict(num_key_value_heads=2), "self_attn.o_proj", 2),
    "gpt_neox": ({}, "attention.dense", 4),
    "qwen2": (dict(num_key_value_heads=2), "self_attn.o_proj", 2),
    "mistral": (dict(num_key_value_heads=1, head_dim=8), "self_attn.o_proj", 1),
    "phi3": (dict(num_key_value_heads=2), "self_attn.o_proj", 2),
    "gpt_bigcode": (dict(n_embd=32, n_layer=3, n_head=4, n_positions=64, multi_query=True), "attn.c_proj", 1),
    "opt": (dict(ffn_dim=64, word_embed_proj_dim=32), "self_attn.out_proj", 4),
    # soft-capped attention logits, a head size that is not width / heads, a window shorter than the sequence
    "gemma2": (dict(num_key_value_heads=2, head_dim=24, attn_logit_softcapping=5.0, final_logit_softcapping=30.0,
                    sliding_window=4, query_pre_attn_scalar=24), "self_attn.o_proj", 2),
    "gemma3_text": (dict(num_key_value_heads=2, head_dim=24, sliding_window=4, sliding_window_pattern=2,
                         query_pre_attn_scalar=24), "self_attn.o_proj", 2),
}
BYPASS = {"falcon": (dict(new_decoder_architecture=True, num_kv_heads=2), "its attention does not go through"),
          "bloom": (dict(n_layer=3, n_head=4), "ALiBi adds a position bias"),
          "mpt": (dict(d_model=32, n_heads=4, n_layers=3, expansion_ratio=2), "ALiBi adds a position bias")}


def tiny(family: str, overrides: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **{**TINY, **overrides})).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_derived_maps_and_values_agree_with_the_block(family):
    overrides, out_proj, kv_heads = FAMILIES[family]
    model = tiny(family, overrides)
    assert len(blocks(model)) == 3 and not describe(model)["missing"]
    ids = torch.randint(1, 96, (2, 7))
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids, output_attentions=True).attentions[1]  # (B, H, T, T) of block 2
        fed = []
        blocks(model)[1].get_submodule(out_proj).register_forward_hook(lambda _m, args, _o: fed.append(args[0]))
        taps = forward_taps(model, ids, hidden=(1, 3), attentions=(2,), qkv=(2,))
    (recorded,) = taps.attentions
    b, t, h, hd = 2, 7, recorded.heads.heads, recorded.heads.head_dim
    assert (h, recorded.heads.kv_heads) == (4, kv_heads) and recorded.k.shape == (b, kv_heads, t, hd)
    maps, vectors = taps.maps()[:, 0], taps.vectors()[:, 0]  # (B, H, T, T), (B, 3, T, H * hd)
    assert vectors.shape == (b, 3, t, h * hd)
    assert [x.shape for x in taps.hidden] == [(b, t, model.config.hidden_size)] * 2
    torch.testing.assert_close(maps, eager, atol=1e-5, rtol=1e-4)
    v = vectors[:, 2].view(b, t, h, hd).transpose(1, 2)  # (B, H, T, hd)
    mixed = (maps @ v).transpose(1, 2).reshape(b, t, h * hd)
    torch.testing.assert_close(mixed, fed[-1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(BYPASS))
def test_attention_outside_the_interface_is_refused_naming_the_family(family):
    overrides, why = BYPASS[family]
    model = tiny(family, overrides)
    missing = describe(model)["missing"]
    assert set(missing) == {"attentions", "qkv"} and missing["attentions"].startswith(f"{family}: {why}")
    with torch.no_grad():
        assert forward_taps(model, torch.randint(1, 96, (1, 5)), hidden=(2,)).hidden[0].shape == (1, 5, 32)
        with pytest.raises(KdbenchError, match=rf"{family}: its attention does not go through"):
            forward_taps(model, torch.randint(1, 96, (1, 5)), attentions=(1,))


def test_maps_under_another_mask_than_the_models_are_refused():
    """Mistral attending to its last 3 tokens: the recorded window derives its maps; the plain causal mask does not."""
    model = tiny("mistral", dict(num_key_value_heads=2, sliding_window=3))
    ids = torch.randint(1, 96, (1, 7))
    with torch.no_grad():
        (recorded,) = forward_taps(model, ids, attentions=(2,)).attentions
        assert recorded.window == 3
        eager = check_attention_formula(model, ids, (2,), recorded.maps()[:, None], "x")
        causal = attention.maps(*recorded.repeated()[:2], recorded.scaling)[:, None]
        with pytest.raises(KdbenchError, match=r"student x \(mistral\): its attention maps are not softmax"):
            check_attention_formula(model, ids, (2,), causal, "student x")
        (short,) = forward_taps(model, ids[:, :3], attentions=(2,)).attentions
    assert eager.shape == (1, 1, 4, 7, 7) and short.window is None  # a window as long as the sequence cuts nothing


# Teachers users bring, at 4 layers: (family, config overrides, attention arms' fate: None runs, else the refusal)
BROUGHT = {
    "gemma2": (dict(num_key_value_heads=2, head_dim=24, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                    sliding_window=16, query_pre_attn_scalar=24), None),
    "gemma3_text": (dict(num_key_value_heads=2, head_dim=24, sliding_window=16, sliding_window_pattern=2,
                         query_pre_attn_scalar=24), None),
    "bloom": (dict(n_layer=4, n_head=4), "ALiBi adds a position bias to q k"),
}
LOGIT_HIDDEN = {"logit": {"terms": {"ce": 0.5, "fkl": 0.5}, "temperature": 2.0},
                "logit_hidden": {"terms": {"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0}, "temperature": 2.0}}
# Gemma's blocks 1 and 3 slide over 16 of the 32 tokens, 2 and 4 see them all: each arm maps layers of one kind
ATTENTION = {"logit_hidden_attn": {"terms": {"ce": 0.5, "fkl": 0.5, "attn_kl": 1.0}, "layer_map": [[1, 1], [2, 3]]},
             "logit_relation": {"terms": {"ce": 0.5, "fkl": 0.5, "relation": 1.0}, "layer_map": "last"}}


@pytest.fixture(scope="module", params=sorted(BROUGHT))
def brought(request, tmp_path_factory, tiny_tokenizer_dir):
    """A teacher of the family saved like a hub model (random weights, a local tokenizer) and packed tokens."""
    family, (overrides, refusal) = request.param, BROUGHT[request.param]
    root = tmp_path_factory.mktemp(family)
    tok = load_tokenizer(tiny_tokenizer_dir)
    ids = dict(vocab_size=len(tok), pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
               eos_token_id=tok.eos_token_id)
    model = tiny(family, {**TINY, "num_hidden_layers": 4, "max_position_embeddings": 32, **ids, **overrides})
    save_model(model, tiny_tokenizer_dir, root / "teacher")
    texts = [f"Person{i} lives in City{i % 5}. Person{i} has a cat." for i in range(300)]
    prepare(iter(texts), tok, DataConfig(source="corpus.jsonl", seq_len=32), root / "data")
    return family, refusal, root


def distil(root: Path, arms: dict, tag: str) -> list[Path]:
    """Cache the teacher for `arms` and train one 2-layer student per arm from the cache, a few steps each."""
    built = {name: build(ArmConfig, spec, f"arms.{name}") for name, spec in arms.items()}
    cache_teacher(root / "teacher", root / "data", CacheConfig(top_k=8, shard_seqs=64), built, 2, 1024,
                  root / tag / "cache", root / tag / "work")
    init_student(StudentConfig(arch=ArchConfig(family="llama", n_layer=2, d_model=32, n_head=2)), 0,
                 root / "teacher", 32, root / "teacher", root / tag / "init")
    train = TrainConfig(tokens=1024, batch_size=8, warmup_steps=1, curve_every=1)
    out = []
    for name, arm in built.items():
        out.append(root / tag / name)
        train_student(name, arm, train, 0, root / tag / "init", root / tag / "cache", root / "data", out[-1],
                      root / tag / "work" / name)
    return out


def planned(root: Path, arms: dict, tmp_path: Path):
    """The workflow's parse-time checks of these arms on the teacher, from its config.json alone."""
    exp = load_experiment({"teacher": {"source": str(root / "teacher")}, "data": {"seq_len": 32},
                           "student": {"arch": {"family": "llama", "n_layer": 2, "d_model": 32, "n_head": 2}},
                           "arms": {**LOGIT_HIDDEN, **arms}})
    return check_models(exp, cache_dir=tmp_path)


def test_brought_teachers_distil_logits_and_hidden_states(brought, tmp_path):
    family, _, root = brought
    planned(root, {}, tmp_path)  # no refusal when no arm reads attention
    for student in distil(root, LOGIT_HIDDEN, "plain"):
        curve = list(csv.DictReader(open(student / "curve.csv")))
        assert len(curve) == 4 and all(math.isfinite(float(row["loss_fkl"])) for row in curve), student
    assert float(curve[-1]["loss_hidden_mse"]) > 0
    assert read_json(root / "plain" / "cache" / "manifest.json")["attention_heads"] is None  # nothing recorded


def test_brought_teachers_run_or_refuse_the_attention_arms_in_one_line(brought, tmp_path):
    family, refusal, root = brought
    if refusal:
        with pytest.raises(KdbenchError, match=rf"^arms\.logit_hidden_attn: the teacher .* \({family}\) cannot give "
                                               rf"attentions, which .*{refusal}") as e:
            planned(root, ATTENTION, tmp_path)
        assert "\n" not in str(e.value)
        return
    info = planned(root, ATTENTION, tmp_path)["teacher"]
    assert info["windows"] == [16, None, 16, None] and info["head_dim"] == 24
    mixed = {"logit_hidden_attn": {**ATTENTION["logit_hidden_attn"], "layer_map": [[1, 1], [2, 2]]}}
    with pytest.raises(KdbenchError, match=rf"^arms\.logit_hidden_attn: the teacher .* \({family}\) has sliding "
                                           r"windows shorter than data\.seq_len 32 .*\{1: 16, 2: None\}"):
        planned(root, mixed, tmp_path)
    attn, relation = distil(root, ATTENTION, "attention")
    manifest = read_json(root / "attention" / "cache" / "manifest.json")
    assert manifest["attention_heads"]["window"] == 16 and manifest["attention_heads"]["head_dim"] == 24
    assert manifest["attention_heads"]["softcap"] == (50.0 if family == "gemma2" else None)
    fidelity = read_json(root / "attention" / "cache" / "fidelity.json")
    assert fidelity["attention_formula_max_abs_err"] < 1e-4 and fidelity["attention_max_abs_err"] < 5e-3
    for student, term in ((attn, "attn_kl"), (relation, "relation")):
        curve = list(csv.DictReader(open(student / "curve.csv")))
        assert all(math.isfinite(float(row[f"loss_{term}"])) and float(row[f"loss_{term}"]) > 0 for row in curve)
