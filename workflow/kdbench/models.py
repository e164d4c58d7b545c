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


def load_model(source: str | Path, dtype: torch.dtype = torch.float32, revision: str | None = None,
               device_map: str | None = None) -> PreTrainedModel:
    """Load a causal LM from a local directory or a hub id at `revision` (offline mode is honoured).

    `device_map="auto"` spreads a model too big for one GPU over the visible GPUs (accelerate).
    """
    try:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, revision=revision, device_map=device_map)
    except (OSError, ValueError) as e:
        raise KdbenchError(f"cannot load model {str(source)!r}: {str(e).splitlines()[0]}") from e


def load_tokenizer(source: str | Path, revision: str | None = None):
    try:
        return AutoTokenizer.from_pretrained(str(source), revision=revision)
    except (OSError, ValueError) as e:
        raise KdbenchError(f"cannot load tokenizer {str(source)!r}: {str(e).splitlines()[0]}") from e


def check_embedding_rows(model: PreTrainedModel, n: int, what: str) -> None:
    """Refuse a model with fewer embedding rows than its tokenizer's `n` ids: some token would have no logit."""
    rows = model.config.vocab_size
    if rows < n:
        raise KdbenchError(f"{what} has {rows} embedding rows, fewer than the {n} tokens of its tokenizer")


def trim_to_tokenizer(model: PreTrainedModel, n: int, what: str) -> None:
    """Cut a teacher's embedding rows to its tokenizer's `n` ids, in place (its config's vocab_size becomes n).

    Families pad the matrix past the tokenizer (Pythia: 50,304 rows for 50,277 tokens); the padded rows
    are no token, so distillation is over the first n logits: the teacher's top-k, tail and its V - k
    are computed over them alone.
    """
    check_embedding_rows(model, n, what)
    if model.config.vocab_size > n:
        model.resize_token_embeddings(n)


def save_model(model: PreTrainedModel, tokenizer_source: str | Path, out_dir: Path, revision: str | None = None) -> None:
    """Write weights (safetensors) and the tokenizer of `tokenizer_source` into `out_dir` (callers make it atomic)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    load_tokenizer(tokenizer_source, revision).save_pretrained(out_dir)


def blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks: the module list in the model with one entry per hidden layer."""
    n = model.config.num_hidden_layers
    for _, module in model.base_model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise KdbenchError(f"unsupported architecture {model.config.model_type!r}: no list of {n} transformer blocks found")


def width(model: PreTrainedModel) -> int:
    return model.get_input_embeddings().embedding_dim


# Fused q/k/v projections, by module name, and how each family lays their outputs out.
# "contiguous": [q | k | v] along the features; "per_head": (H, 3, hd) (GPT-NeoX, BLOOM);
# "grouped": (G, H/G + 2, hd), each kv group's queries then its key and value (Falcon's new layout).
_SPLIT = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
_FUSED = ("c_attn", "query_key_value", "qkv_proj", "Wqkv")
_FUSED_LAYOUT = {"gpt2": "contiguous", "gpt_bigcode": "contiguous", "phi3": "contiguous", "gpt_neox": "per_head",
                 "bloom": "per_head"}


def _fused_layout(cfg) -> str | None:
    if cfg.model_type == "falcon":  # three layouts, by config
        return ("grouped" if cfg.new_decoder_architecture else "contiguous" if cfg.multi_query else "per_head")
    return _FUSED_LAYOUT.get(cfg.model_type)


def _out_features(m: nn.Module) -> int:
    return m.weight.shape[1] if type(m).__name__ == "Conv1D" else m.weight.shape[0]  # GPT-2's Conv1D is (in, out)


@dataclass(frozen=True)
class QKV:
    """Where a block's queries, keys and values come from: hooked projection modules and their layout."""
    modules: tuple[nn.Module, ...]  # 3 separate projections, or 1 fused
    layout: str                     # "split" | "contiguous" | "per_head" | "grouped"
    heads: int                      # query heads
    kv_heads: int                   # key/value heads (fewer under grouped- or multi-query attention)
    head_dim: int

    def split(self, outs: list[Tensor]) -> Tensor:
        """Projection outputs -> (B, 3, T, H * hd), keys and values repeated to the query heads.

        Under grouped-query attention kv head j serves query heads j * H/G ... (j + 1) * H/G - 1, so
        repeating it to those heads gives each query head the keys and values it attends with, and
        q/k/v relations and attention maps keep the query heads' layout (MiniLMv2 splits q, k and v
        alike into relation heads).
        """
        h, g, hd = self.heads, self.kv_heads, self.head_dim
        if self.layout == "split":
            q, k, v = outs
        else:
            (fused,) = outs
            b, t, _ = fused.shape
            if self.layout == "contiguous":
                q, k, v = fused.split([h * hd, g * hd, g * hd], dim=-1)
            elif self.layout == "per_head":  # (B, T, H, 3, hd)
                q, k, v = fused.view(b, t, h, 3, hd).unbind(3)
            else:  # grouped: (B, T, G, H/G + 2, hd)
                grouped = fused.view(b, t, g, h // g + 2, hd)
                q, k, v = grouped[..., :-2, :], grouped[..., -2, :], grouped[..., -1, :]
        b, t = q.shape[:2]
        q, k, v = (x.reshape(b, t, -1, hd) for x in (q, k, v))
        if g != h:
            k, v = (x.repeat_interleave(h // g, dim=2) for x in (k, v))
        return torch.stack([q, k, v], dim=1).flatten(-2)


def qkv_of(model: PreTrainedModel, layer: int) -> QKV:
    """The q/k/v projections of block `layer` (1-based), found by module name and checked against their sizes."""
    block = blocks(model)[layer - 1]
    cfg, kind = model.config, model.config.model_type
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads:
        raise KdbenchError(f"{kind}: no attention heads in its config (not an attention model)")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    named = {name.rsplit(".", 1)[-1]: m for name, m in block.named_modules() if name}
    for names in _SPLIT:
        if all(n in named for n in names):
            q, k, v = (named[n] for n in names)
            kv_heads = _out_features(k) // head_dim
            return _checked(QKV((q, k, v), "split", heads, kv_heads, head_dim), kind, _out_features(q), _out_features(k))
    fused = next((named[n] for n in _FUSED if n in named), None)
    if fused is None:
        raise KdbenchError(f"{kind}: no query/key/value projections found in its blocks "
                           f"(looked for {', '.join('/'.join(n) for n in _SPLIT)} and fused {', '.join(_FUSED)})")
    layout = _fused_layout(cfg)
    if layout is None:
        raise KdbenchError(f"{kind}: fused q/k/v projection of unknown layout "
                           f"(known for {', '.join(sorted([*_FUSED_LAYOUT, 'falcon']))})")
    kv_out = (_out_features(fused) - heads * head_dim) / 2  # what is left for k and v
    qkv = QKV((fused,), layout, heads, int(kv_out) // head_dim, head_dim)
    return _checked(qkv, kind, heads * head_dim, kv_out)


def _checked(qkv: QKV, kind: str, q_out: int, kv_out: float) -> QKV:
    ok = (q_out == qkv.heads * qkv.head_dim and kv_out == qkv.kv_heads * qkv.head_dim and qkv.kv_heads >= 1
          and qkv.heads % qkv.kv_heads == 0)
    if not ok:
        raise KdbenchError(f"{kind}: q/k/v projection sizes {q_out}/{kv_out} do not match {qkv.heads} heads of "
                           f"{qkv.head_dim} with {qkv.kv_heads} kv heads")
    return qkv


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
def _capture_qkv(model: PreTrainedModel, layers: tuple[int, ...]) -> Iterator[list[tuple[QKV, list[Tensor]]]]:
    store = [(qkv_of(model, layer), []) for layer in layers]
    handles = [module.register_forward_hook(lambda _m, _i, out, slot=slot: slot.append(out))
               for qkv, slot in store for module in qkv.modules]
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
                qkv=tuple(spec.split(outs) for spec, outs in store))


def describe(model: PreTrainedModel) -> dict:
    """What distillation can read from `model`: its shape, and per layer component why it cannot be captured."""
    cfg, missing = model.config, {}
    try:
        for layer in range(1, len(blocks(model)) + 1):
            qkv_of(model, layer)
    except KdbenchError as e:
        missing["qkv"] = str(e)
    if not getattr(cfg, "num_attention_heads", None):
        missing["attentions"] = f"{cfg.model_type}: no attention heads in its config (not an attention model)"
    heads = getattr(cfg, "num_attention_heads", None)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    compute = sum(p.numel() for p in model.parameters() if p is not embedding) + (head.numel() if head is embedding else 0)
    return {"model_type": cfg.model_type, "n_layer": len(blocks(model)), "width": width(model), "heads": heads,
            "head_dim": heads and (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads),
            "vocab_size": cfg.vocab_size, "compute_params": compute, "missing": missing}


def describe_config(config_dir: str | Path) -> dict:
    """`describe` of the model a config.json defines, built on the meta device: no weights read or allocated."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(config_dir))
    if getattr(cfg, "is_encoder_decoder", False):
        raise KdbenchError(f"{cfg.model_type}: an encoder-decoder model, not a decoder-only causal LM")
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except ValueError as e:
        raise KdbenchError(f"{cfg.model_type}: not a causal LM ({str(e).splitlines()[0]})") from e
    return describe(model)


def vocabulary_sha256(tokenizer) -> str:
    """Semantic hash of a tokenizer (vocabulary + special tokens), independent of file formatting."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())
    return hashlib.sha256(json.dumps([vocab, specials]).encode()).hexdigest()


if __name__ == "__main__":  # python -m kdbench.models CONFIG_DIR: describe a model from its config (kdbench.checks)
    import sys

    try:
        print(json.dumps(describe_config(sys.argv[1])))
    except KdbenchError as e:
        print(json.dumps({"error": str(e)}))
