"""kdbench.models.causal_lm on any decoder-only causal LM: blocks, hidden states, and queries, keys and values as the
attention receives them (grouped- and multi-query attention included), on tiny random stand-ins of ten families.

Two checks need no family knowledge: the attention maps derived from the recorded q and k must equal the
model's own eager maps (rotary embeddings included), and per query head those maps times the recorded
values must equal what the block feeds its output projection. Families whose attention bypasses
transformers' attention interface (Falcon, BLOOM) are refused, naming the family.

    .venv/bin/python -m pytest tests/test_families.py -q   (CPU, offline, about 20 s)
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kdbench import KdbenchError
from kdbench.models.causal_lm import blocks, check_attention_formula, describe, forward_taps

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
}
BYPASS = {"falcon": dict(new_decoder_architecture=True, num_kv_heads=2), "bloom": dict(n_layer=3, n_head=4)}


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
    model = tiny(family, BYPASS[family])
    missing = describe(model)["missing"]
    assert set(missing) == {"attentions", "qkv"} and missing["attentions"].startswith(f"{family}: its attention")
    with torch.no_grad():
        assert forward_taps(model, torch.randint(1, 96, (1, 5)), hidden=(2,)).hidden[0].shape == (1, 5, 32)
        with pytest.raises(KdbenchError, match=rf"{family}: its attention does not go through"):
            forward_taps(model, torch.randint(1, 96, (1, 5)), attentions=(1,))


def test_a_sliding_window_within_the_sequence_is_refused():
    """Mistral attending to its last 3 tokens only: maps derived under the plain causal mask are not its own."""
    model = tiny("mistral", dict(num_key_value_heads=2, sliding_window=3))
    ids = torch.randint(1, 96, (1, 7))
    with torch.no_grad():
        derived = forward_taps(model, ids, attentions=(1, 2)).maps()
    with pytest.raises(KdbenchError, match=r"student x \(mistral\): its attention maps are not softmax"):
        check_attention_formula(model, ids, (1, 2), derived, "student x")
    with torch.no_grad():
        short = ids[:, :3]  # within the window the formula holds
        eager = check_attention_formula(model, short, (1, 2), forward_taps(model, short, attentions=(1, 2)).maps(), "x")
    assert eager.shape == (1, 2, 4, 3, 3)
