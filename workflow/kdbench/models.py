"""Causal LMs: build from an architecture config, load from the hub or disk, save, and run with taps.

Every model is a plain Hugging Face causal LM, so lm-eval, `save_pretrained` and any
downstream tool load it without this package.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedModel,
)

from kdbench import KdbenchError
from kdbench.config import ArchConfig


def build_model(arch: ArchConfig, vocab_size: int, max_len: int, eos_id: int, seed: int) -> PreTrainedModel:
    """A randomly initialised causal LM; the same (arch, seed) always gives the same weights."""
    if arch.d_model % arch.n_head:
        raise KdbenchError(f"arch: d_model {arch.d_model} is not divisible by n_head {arch.n_head}")
    d_ff = arch.d_ff or 4 * arch.d_model
    common = dict(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    if arch.family == "gpt2":
        cfg = GPT2Config(n_positions=max_len, n_embd=arch.d_model, n_layer=arch.n_layer, n_head=arch.n_head,
                         n_inner=d_ff, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         activation_function="gelu_pytorch_tanh", **common)  # GPT-2's GELU in one fused kernel
    elif arch.family == "llama":
        cfg = LlamaConfig(hidden_size=arch.d_model, intermediate_size=d_ff, num_hidden_layers=arch.n_layer,
                          num_attention_heads=arch.n_head, num_key_value_heads=arch.n_head,
                          max_position_embeddings=max_len, tie_word_embeddings=True, **common)
    else:
        cfg = GPTNeoXConfig(hidden_size=arch.d_model, intermediate_size=d_ff, num_hidden_layers=arch.n_layer,
                            num_attention_heads=arch.n_head, max_position_embeddings=max_len,
                            hidden_dropout=0.0, attention_dropout=0.0, **common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cfg)


def load_model(source: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a causal LM from a local directory or a hub id (offline mode is honoured)."""
    try:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
    except (OSError, ValueError) as e:
        raise KdbenchError(f"cannot load model {str(source)!r}: {str(e).splitlines()[0]}") from e


def load_tokenizer(source: str | Path):
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise KdbenchError(f"cannot load tokenizer {str(source)!r}: {str(e).splitlines()[0]}") from e


def save_model(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path) -> None:
    """Write weights (safetensors) and the tokenizer into `out_dir` (callers make it atomic)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    load_tokenizer(tokenizer_dir).save_pretrained(out_dir)


def blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The list of transformer blocks, whatever the family calls it."""
    base = model.base_model
    for name in ("h", "layers"):
        if isinstance(getattr(base, name, None), nn.ModuleList):
            return getattr(base, name)
    raise KdbenchError(f"unsupported architecture {model.config.model_type!r}: no transformer blocks found")


def width(model: PreTrainedModel) -> int:
    return model.get_input_embeddings().embedding_dim


def _qkv_module(model: PreTrainedModel, layer: int) -> tuple[nn.Module, ...]:
    block = blocks(model)[layer - 1]
    kind = model.config.model_type
    if kind == "gpt2":
        return (block.attn.c_attn,)
    if kind == "gpt_neox":
        return (block.attention.query_key_value,)
    attn = getattr(block, "self_attn", None)
    if attn is not None and all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj")):
        return attn.q_proj, attn.k_proj, attn.v_proj
    raise KdbenchError(f"relation loss: cannot find query/key/value projections in {kind!r} models")


def _split_qkv(model: PreTrainedModel, outs: list[Tensor]) -> Tensor:
    """Projection outputs -> (B, 3, T, D)."""
    if len(outs) == 3:
        return torch.stack(outs, dim=1)
    (fused,) = outs  # (B, T, 3D)
    b, t, three_d = fused.shape
    if model.config.model_type == "gpt_neox":  # per-head interleaved: (B, T, H, 3, hd)
        h = model.config.num_attention_heads
        fused = fused.view(b, t, h, 3, three_d // (3 * h)).permute(0, 3, 1, 2, 4).reshape(b, 3, t, three_d // 3)
        return fused
    return fused.view(b, t, 3, three_d // 3).transpose(1, 2)


@dataclass
class Taps:
    """What one forward pass exposes for distillation, one tensor per requested layer.

    Per-layer tensors are the model's own (no copy); `stacked` gives the (B, L, ...) layout.
    """
    logits: Tensor                        # (B, T, V)
    hidden: tuple[Tensor, ...] = ()       # (B, T, D) outputs of the requested blocks
    attentions: tuple[Tensor, ...] = ()   # (B, H, T, T)
    qkv: tuple[Tensor, ...] = ()          # (B, 3, T, D)

    def stacked(self, name: str, dtype: torch.dtype | None = None) -> Tensor | None:
        """Component `name` as one (B, L, ...) tensor (each layer cast to `dtype` first), None when no layer was requested."""
        layers = getattr(self, name)
        return torch.stack([x.to(dtype) for x in layers] if dtype else layers, dim=1) if layers else None


@contextmanager
def _capture_qkv(model: PreTrainedModel, layers: tuple[int, ...]) -> Iterator[list[list[Tensor]]]:
    store: list[list[Tensor]] = [[] for _ in layers]
    handles = []
    for slot, layer in zip(store, layers):
        for module in _qkv_module(model, layer):
            handles.append(module.register_forward_hook(lambda _m, _i, out, slot=slot: slot.append(out)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def forward_taps(model: PreTrainedModel, input_ids: Tensor, hidden: tuple[int, ...] = (),
                 attentions: tuple[int, ...] = (), qkv: tuple[int, ...] = ()) -> Taps:
    """Run the model once and collect logits plus each component's requested layers.

    Layers are 1-based block indices (`hidden_states[l]` is the output of block l).
    Attentions need the eager attention kernel; the caller switches it on.
    """
    with _capture_qkv(model, qkv) as store:
        out = model(input_ids=input_ids, output_hidden_states=bool(hidden), output_attentions=bool(attentions),
                    use_cache=False)
    return Taps(logits=out.logits, hidden=tuple(out.hidden_states[l] for l in hidden),
                attentions=tuple(out.attentions[l - 1] for l in attentions),
                qkv=tuple(_split_qkv(model, outs) for outs in store))


def vocabulary_sha256(tokenizer) -> str:
    """Semantic hash of a tokenizer (vocabulary + special tokens), independent of file formatting."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())
    return hashlib.sha256(json.dumps([vocab, specials]).encode()).hexdigest()
