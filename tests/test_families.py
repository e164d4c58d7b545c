"""kdbench.models on any decoder-only causal LM: blocks, hidden states, attention maps and q/k/v found from
the model itself, grouped- and multi-query attention included, on tiny random stand-ins of ten families.

The check that q/k/v are laid out right needs no family knowledge: per query head, the captured attention
map times the captured values must equal what the block feeds its output projection (values carry no
rotary embedding), and for the families without rotary embeddings softmax(q k^T / sqrt(hd)) must equal the
map itself.

    .venv/bin/python -m pytest tests/test_families.py -q   (CPU, offline, about 20 s)
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kdbench import KdbenchError
from kdbench.models import blocks, forward_taps, qkv_of

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, vocab_size=96,
            max_position_embeddings=64, pad_token_id=0, bos_token_id=0, eos_token_id=0)
# family -> (config overrides, output projection in the block, kv heads, rotary-free)
FAMILIES = {
    "gpt2": (dict(n_embd=32, n_layer=3, n_head=4, n_positions=64), "attn.c_proj", 4, True),
    "llama": (dict(num_key_value_heads=2), "self_attn.o_proj", 2, False),
    "gpt_neox": ({}, "attention.dense", 4, False),
    "qwen2": (dict(num_key_value_heads=2), "self_attn.o_proj", 2, False),
    "mistral": (dict(num_key_value_heads=1, head_dim=8), "self_attn.o_proj", 1, False),
    "phi3": (dict(num_key_value_heads=2), "self_attn.o_proj", 2, False),
    "gpt_bigcode": (dict(n_embd=32, n_layer=3, n_head=4, n_positions=64, multi_query=True), "attn.c_proj", 1, True),
    "falcon": (dict(new_decoder_architecture=True, num_kv_heads=2), "self_attention.dense", 2, False),
    "bloom": (dict(n_layer=3, n_head=4), "self_attention.dense", 4, False),
    "opt": (dict(ffn_dim=64, word_embed_proj_dim=32), "self_attn.out_proj", 4, True),
}


def tiny(family: str) -> torch.nn.Module:
    overrides = FAMILIES[family][0]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **{**TINY, **overrides}))
    model.set_attn_implementation("eager")
    return model.eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_qkv_and_attention_maps_agree_with_the_block(family):
    model = tiny(family)
    _, out_proj, kv_heads, no_rotary = FAMILIES[family]
    assert len(blocks(model)) == 3
    spec = qkv_of(model, 2)
    assert (spec.heads, spec.kv_heads) == (4, kv_heads)
    fed = []
    blocks(model)[1].get_submodule(out_proj).register_forward_hook(lambda _m, args, _o: fed.append(args[0]))
    ids = torch.randint(1, 96, (2, 7))
    with torch.no_grad():
        taps = forward_taps(model, ids, hidden=(1, 3), attentions=(2,), qkv=(2,))
    b, t, h, hd = 2, 7, spec.heads, spec.head_dim
    attn, qkv = taps.attentions[0], taps.qkv[0]  # (B, H, T, T), (B, 3, T, H * hd)
    assert attn.shape == (b, h, t, t) and qkv.shape == (b, 3, t, h * hd)
    assert [x.shape for x in taps.hidden] == [(b, t, model.config.hidden_size)] * 2
    q, k, v = (qkv[:, i].view(b, t, h, hd).transpose(1, 2) for i in range(3))  # (B, H, T, hd)
    mixed = (attn @ v).transpose(1, 2).reshape(b, t, h * hd)
    torch.testing.assert_close(mixed, fed[0], atol=1e-5, rtol=1e-4)
    if no_rotary:
        scores = q @ k.transpose(-1, -2) / hd ** 0.5
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        torch.testing.assert_close(scores.softmax(-1), attn, atol=1e-5, rtol=1e-4)


def test_unknown_fused_layout_is_refused_naming_the_family():
    model = tiny("gpt_neox")
    model.config.model_type = "my_lm"
    with pytest.raises(KdbenchError, match=r"my_lm: fused q/k/v projection of unknown layout"):
        qkv_of(model, 1)
