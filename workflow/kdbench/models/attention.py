"""Queries, keys and values as a model's attention sees them, and the attention maps they make.

Models route attention through transformers' attention interface; `recording` switches a model to
one more implementation, registered here, that hands each call's query, key and value (after
rotary embeddings, before key/value heads are repeated) to the recorder and then attends. An
attention map is softmax(cap(q k^T * scaling)) under the causal mask (`maps`), the same formula on
both sides of distillation: the cache stores q and k, O(width) bytes per token, instead of maps,
O(heads x seq_len), and a student's maps are derived from its own q and k with gradients. The
formula covers what families declare in their configs: attention logit soft-capping
(cap(s) = c tanh(s / c), Gemma-2) and a sliding window (a band mask, Mistral, Gemma); whether it is
a model's attention is measured against its eager kernel (`causal_lm.check_attention_formula`).
A position bias added to q k^T (ALiBi) is not a function of q and k: `causal_lm.describe` refuses it.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kdbench import KdbenchError

IMPLEMENTATION = "kdbench_record"
_RECORDER: contextvars.ContextVar[dict | None] = contextvars.ContextVar("kdbench_attention_recorder", default=None)


def _record_and_attend(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
    scaling, softcap = kwargs.get("scaling") or query.shape[-1] ** -0.5, kwargs.get("softcap")  # None: sdpa's default
    window = kwargs.get("sliding_window")
    slots = _RECORDER.get()
    if slots is not None and id(module) in slots:
        slots[id(module)].append((query, key, value, scaling, softcap,  # a window as long as the keys cuts nothing
                                  window if window and window < key.shape[-2] else None))
    if softcap is None or kwargs.get("position_bias") is not None:  # sdpa adds a bias; it refuses a cap with one
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # PyTorch's fused kernels cannot soft-cap: attend by the formula, under sdpa_mask's mask (True: attend)
    r = query.shape[1] // key.shape[1]
    key, value = (x.repeat_interleave(r, dim=1) if r > 1 else x for x in (key, value))
    keep = attention_mask if attention_mask is not None else ~_future(query.shape[-2], key.shape[-2], query.device)
    scores = capped(query @ key.transpose(-1, -2) * scaling, softcap).masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=kwargs.get("dropout", 0.0), training=module.training)
    return (probs @ value).transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, _record_and_attend)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


@dataclass(frozen=True)
class Heads:
    """A layer's attention geometry: query heads, key/value heads (fewer under grouped- or multi-query
    attention), head size, and the scale of q k^T."""
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    softcap: float | None = None  # attention logit soft-capping c: scores become c tanh(s / c)
    window: int | None = None     # a sliding window shorter than the sequence: keys within `window` tokens back


@dataclass(frozen=True)
class Recorded:
    """One layer's q (B, H, T, hd), k and v (B, G, T, hd), as its attention received them, and its formula."""
    q: Tensor
    k: Tensor
    v: Tensor
    scaling: float
    softcap: float | None = None
    window: int | None = None

    @property
    def heads(self) -> Heads:
        return Heads(self.q.shape[1], self.k.shape[1], self.q.shape[-1], float(self.scaling), self.softcap, self.window)

    def repeated(self) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v with each kv head repeated to the query heads it serves (as `unpack` gives them)."""
        r = self.q.shape[1] // self.k.shape[1]
        return self.q, *(x.repeat_interleave(r, dim=1) if r > 1 else x for x in (self.k, self.v))

    def packed(self, parts: str) -> Tensor:
        """(B, T, width) with the heads of `parts` ("qk" or "qkv") side by side: what the cache stores."""
        return torch.cat([getattr(self, p).transpose(1, 2).flatten(2) for p in parts], dim=-1)

    def maps(self) -> Tensor:
        """(B, H, T, T) attention probabilities of this layer."""
        q, k, _ = self.repeated()
        return maps(q, k, self.scaling, self.softcap, self.window)


def unpack(x: Tensor, heads: Heads, parts: str) -> tuple[Tensor, ...]:
    """`Recorded.packed` (..., T, width) -> q (..., H, T, hd) and k (and v) (..., H, T, hd), repeated to the
    query heads: kv head j serves query heads j * H/G ... (j + 1) * H/G - 1."""
    h, g, hd = heads.heads, heads.kv_heads, heads.head_dim
    sizes = [h * hd] + [g * hd] * (len(parts) - 1)
    if x.shape[-1] != sum(sizes):
        raise KdbenchError(f"attention: stored q/k/v width {x.shape[-1]} does not match {h} heads and {g} kv heads "
                           f"of {hd}")
    out = []
    for part, n in zip(x.split(sizes, dim=-1), [h] + [g] * (len(parts) - 1)):
        part = part.unflatten(-1, (n, hd)).transpose(-3, -2)  # (..., n, T, hd)
        out.append(part.repeat_interleave(h // n, dim=-3) if n != h else part)
    return tuple(out)


def capped(scores: Tensor, softcap: float | None) -> Tensor:
    """Attention logit soft-capping: c tanh(s / c) (the identity without a cap)."""
    return scores if softcap is None else softcap * torch.tanh(scores / softcap)


def _future(steps: int, keys: int, device, window: int | None = None) -> Tensor:
    """(steps, keys) True where a query may not look: later keys and, with a window, keys `window` or more back."""
    offset = torch.arange(steps, device=device)[:, None] - torch.arange(keys, device=device)[None] + keys - steps
    return (offset < 0) | (offset >= window) if window else offset < 0


def maps(q: Tensor, k: Tensor, scaling: float, softcap: float | None = None, window: int | None = None) -> Tensor:
    """Causal attention probabilities softmax(cap(q k^T * scaling)) in float32, within the sliding `window` if one:
    (..., H, T, hd) x 2 -> (..., H, T, T)."""
    scores = capped((q.float() @ k.float().transpose(-1, -2)) * scaling, softcap)
    steps = scores.shape[-1]
    return torch.softmax(scores.masked_fill(_future(steps, steps, scores.device, window), float("-inf")), dim=-1)


def stored_maps(qk: Tensor, heads: Heads) -> Tensor:
    """Maps from q|k as the cache stores them (`Recorded.packed("qk")`): (..., T, width) -> (..., H, T, T)."""
    return maps(*unpack(qk, heads, "qk"), heads.scaling, heads.softcap, heads.window)


def vectors(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(..., H, T, hd) each -> (..., 3, T, H * hd): the layout of the relation loss."""
    return torch.stack([x.transpose(-3, -2).flatten(-2) for x in (q, k, v)], dim=-3)


def supported(model) -> bool:
    """Whether `model`'s attention goes through transformers' attention interface (so it can be recorded)."""
    return type(model)._can_set_attn_implementation()


@contextmanager
def recording(model, blocks, layers: tuple[int, ...]) -> Iterator[dict[int, list[Recorded]]]:
    """Record q/k/v of blocks `layers` (1-based) during the forward passes inside the context.

    Yields {layer: [Recorded, ...]}, filled when the context exits. The model stays switched to the
    recording implementation (sdpa numerics; the switch is not saved with the model).
    """
    if not layers:
        yield {}
        return
    if not supported(model):
        raise KdbenchError(f"{model.config.model_type}: its attention does not go through transformers' attention "
                           "interface, so its queries and keys cannot be recorded")
    if model.config._attn_implementation != IMPLEMENTATION:
        model.set_attn_implementation(IMPLEMENTATION)
    owner = {id(m): layer for layer in layers for m in blocks[layer - 1].modules()}
    slots: dict[int, list] = {i: [] for i in owner}
    token = _RECORDER.set(slots)
    out: dict[int, list[Recorded]] = {layer: [] for layer in layers}
    try:
        yield out
    finally:
        _RECORDER.reset(token)
    for i, calls in slots.items():
        out[owner[i]].extend(Recorded(*c) for c in calls)
    empty = [layer for layer, calls in out.items() if not calls]
    if empty:
        raise KdbenchError(f"{model.config.model_type}: no attention call recorded in blocks {empty}")
