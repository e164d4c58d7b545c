"""Queries, keys and values as a model's attention sees them, and the attention maps they make.

Models route attention through transformers' attention interface; `recording` switches a model to
one more implementation, registered here, that hands each call's query, key and value (after
rotary embeddings, before key/value heads are repeated) to the recorder and then runs PyTorch's
scaled-dot-product attention. An attention map is then softmax(q k^T * scaling) under the causal
mask (`maps`), the same formula on both sides of distillation: the cache stores q and k, O(width)
bytes per token, instead of maps, O(heads x seq_len), and a student's maps are derived from its
own q and k with gradients. Whether the formula is a model's attention (no ALiBi, soft-capping
or sliding window within the sequence) is measured against its eager kernel (`derived_error`).
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
    slots = _RECORDER.get()
    if slots is not None and id(module) in slots:
        scaling = kwargs.get("scaling")  # None: sdpa's default, 1 / sqrt(head size)
        slots[id(module)].append((query, key, value, query.shape[-1] ** -0.5 if scaling is None else scaling))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


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


@dataclass(frozen=True)
class Recorded:
    """One layer's q (B, H, T, hd), k and v (B, G, T, hd), as its attention received them."""
    q: Tensor
    k: Tensor
    v: Tensor
    scaling: float

    @property
    def heads(self) -> Heads:
        return Heads(self.q.shape[1], self.k.shape[1], self.q.shape[-1], float(self.scaling))

    def repeated(self) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v with each kv head repeated to the query heads it serves (as `unpack` gives them)."""
        r = self.q.shape[1] // self.k.shape[1]
        return self.q, *(x.repeat_interleave(r, dim=1) if r > 1 else x for x in (self.k, self.v))

    def packed(self, parts: str) -> Tensor:
        """(B, T, width) with the heads of `parts` ("qk" or "qkv") side by side: what the cache stores."""
        return torch.cat([getattr(self, p).transpose(1, 2).flatten(2) for p in parts], dim=-1)


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


def maps(q: Tensor, k: Tensor, scaling: float) -> Tensor:
    """Causal attention probabilities softmax(q k^T * scaling) in float32: (..., H, T, hd) x 2 -> (..., H, T, T)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * scaling
    steps = scores.shape[-1]
    future = torch.ones(steps, steps, dtype=torch.bool, device=scores.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def stored_maps(qk: Tensor, heads: Heads) -> Tensor:
    """Maps from q|k as the cache stores them (`Recorded.packed("qk")`): (..., T, width) -> (..., H, T, T)."""
    return maps(*unpack(qk, heads, "qk"), heads.scaling)


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
