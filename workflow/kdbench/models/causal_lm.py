"""Causal LMs: build from an architecture config, load from the hub or disk, save, and run with taps.

Every model is a plain Hugging Face causal LM, so lm-eval, `save_pretrained` and any
downstream tool load it without this package.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

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
from kdbench.models import attention
from kdbench.models.attention import Recorded
from kdbench.schema.checks import missing_model
from kdbench.schema.config import ArchConfig


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
    if why := missing_model(str(source), revision):
        raise KdbenchError(f"cannot load model: {why}")
    try:
        return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, revision=revision, device_map=device_map)
    except (OSError, ValueError) as e:
        raise KdbenchError(f"cannot load model {str(source)!r}: {str(e).splitlines()[0]}") from e


def load_tokenizer(source: str | Path, revision: str | None = None):
    if why := missing_model(str(source), revision, marker=None):
        raise KdbenchError(f"cannot load tokenizer: {why}")
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


@dataclass
class Taps:
    """What one forward pass exposes for distillation, per requested layer.

    Hidden states are the model's own tensors (no copy); attention layers come as recorded q/k/v
    (`kdbench.models.attention`), from which `maps` and `vectors` derive what the losses compare.
    """
    logits: Tensor                        # (B, T, V)
    hidden: tuple[Tensor, ...] = ()       # (B, T, D) outputs of the requested blocks
    attentions: tuple[Recorded, ...] = ()  # q/k/v of the blocks whose attention maps are wanted
    qkv: tuple[Recorded, ...] = ()        # q/k/v of the blocks whose vectors are wanted

    def stacked(self, dtype: torch.dtype | None = None) -> Tensor | None:
        """Hidden states as one (B, L, T, D) tensor (each layer cast to `dtype` first), None when none was requested."""
        layers = self.hidden
        return torch.stack([x.to(dtype) for x in layers] if dtype else layers, dim=1) if layers else None

    def maps(self) -> Tensor | None:
        """(B, L, H, T, T) attention probabilities of the `attentions` layers."""
        if not self.attentions:
            return None
        return torch.stack([r.maps() for r in self.attentions], dim=1)

    def vectors(self) -> Tensor | None:
        """(B, L, 3, T, H * hd) queries, keys and values of the `qkv` layers, keys and values repeated per query head."""
        return torch.stack([attention.vectors(*r.repeated()) for r in self.qkv], dim=1) if self.qkv else None


def forward_taps(model: PreTrainedModel, input_ids: Tensor, hidden: tuple[int, ...] = (),
                 attentions: tuple[int, ...] = (), qkv: tuple[int, ...] = ()) -> Taps:
    """Run the model once and collect logits plus each component's requested layers.

    Layers are 1-based block indices (`hidden_states[l]` is the output of block l).
    """
    with attention.recording(model, blocks(model), tuple(sorted({*attentions, *qkv}))) as recorded:
        out = model(input_ids=input_ids, output_hidden_states=bool(hidden), use_cache=False)
    return Taps(logits=out.logits, hidden=tuple(out.hidden_states[l] for l in hidden),
                attentions=tuple(recorded[l][0] for l in attentions), qkv=tuple(recorded[l][0] for l in qkv))


@torch.no_grad()
def check_attention_formula(model: PreTrainedModel, input_ids: Tensor, layers: tuple[int, ...], derived: Tensor,
                            who: str) -> Tensor:
    """Refuse `model` unless the maps `derived` from its recorded q/k (B, L, H, T, T) are its eager kernel's at
    blocks `layers`; returns the eager maps. Tolerance: the kernels' own float differences (bf16 autocast: 5e-2)."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=input_ids, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(before)
    eager = torch.stack([out.attentions[l - 1].float() for l in layers], dim=1)
    error = float((derived.float() - eager).abs().max())
    if error > (5e-2 if torch.is_autocast_enabled(input_ids.device.type) else 1e-4):
        raise KdbenchError(
            f"{who} ({model.config.model_type}): its attention maps are not softmax(cap(q k^T * scale)) under its "
            f"causal or sliding-window mask (max abs difference {error:.2g} from its eager kernel; a position bias?), "
            "so arms reading attentions cannot distil with it")
    return eager


def heads_of(cfg) -> tuple[int, int, int] | None:
    """(query heads, key/value heads, head size) from a model's config; None without attention heads."""
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads:
        return None
    kv = getattr(cfg, "num_key_value_heads", None) or (1 if getattr(cfg, "multi_query", False) else heads)
    return heads, kv, getattr(cfg, "head_dim", None) or cfg.hidden_size // heads


def alibi(cfg) -> bool:
    """Whether a config declares ALiBi position biases (BLOOM always; Falcon and MPT by a flag)."""
    flags = (getattr(cfg, "alibi", False), getattr(getattr(cfg, "attn_config", None), "alibi", False))
    return cfg.model_type == "bloom" or any(flags)


def windows(cfg, n_layer: int) -> list[int | None]:
    """Each block's sliding window from a config (None: the whole causal past): `sliding_window` on the layers
    `layer_types` names "sliding_attention", on every layer without `layer_types` (Mistral)."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not window:
        return [None] * n_layer
    return [window if types is None or types[i] == "sliding_attention" else None for i in range(n_layer)]


def describe(model: PreTrainedModel) -> dict:
    """What distillation can read from `model`: its shape, its attention's formula (soft-capping, per-layer sliding
    windows) and per layer component why it cannot be captured."""
    cfg, missing, geometry = model.config, {}, heads_of(model.config)
    if geometry is None:
        missing["attentions"] = missing["qkv"] = f"{cfg.model_type}: no attention heads in its config (not an attention model)"
    elif alibi(cfg):
        missing["attentions"] = missing["qkv"] = (f"{cfg.model_type}: ALiBi adds a position bias to q k^T, which "
                                                  "recorded queries and keys cannot reproduce")
    elif not attention.supported(model):
        missing["attentions"] = missing["qkv"] = (f"{cfg.model_type}: its attention does not go through transformers' "
                                                  "attention interface, so its queries and keys cannot be recorded")
    heads, kv_heads, head_dim = geometry or (None, None, None)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    compute = sum(p.numel() for p in model.parameters() if p is not embedding) + (head.numel() if head is embedding else 0)
    n_layer = len(blocks(model))
    return {"model_type": cfg.model_type, "n_layer": n_layer, "width": width(model), "heads": heads,
            "kv_heads": kv_heads, "head_dim": head_dim, "vocab_size": cfg.vocab_size, "compute_params": compute,
            "softcap": getattr(cfg, "attn_logit_softcapping", None), "windows": windows(cfg, n_layer),
            "missing": missing}


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


if __name__ == "__main__":  # python -m kdbench.models.causal_lm CONFIG_DIR: describe a model from its config (kdbench.schema.checks)
    import sys

    try:
        print(json.dumps(describe_config(sys.argv[1])))
    except KdbenchError as e:
        print(json.dumps({"error": str(e)}))
