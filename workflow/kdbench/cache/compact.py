"""Compact layer targets: a cached layer vector as int8 coefficients in a per-layer basis, and what that loses.

With `cache.layer_rank` r > 0 (one rank for all, or per component) a layered component (hidden states,
attention q|k, q|k|v) stores, per token and layer, r int8 coefficients and one float32 scale: r + 4 bytes
instead of 2 D. A layer's basis is the mean and the r leading principal directions of that layer's vectors
on the first teacher batch (`fit`), kept beside the shards as `<component>.basis.npy`; the reader and the
online teacher decode mean + coefficients x scale @ directions (`decode`), so every loss reads vectors
of the teacher's width and no loss knows about the basis. `fidelity` measures the cost where it
matters: each component's loss value and its gradient with respect to the student's activations,
with decoded targets against exact (float32) ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdbench.losses import StudentOutputs, Targets, attention_kl, hidden_mse, relation
from kdbench.models import attention
from kdbench.models.attention import Heads

STUDENT_DISTANCE = 0.5  # the stand-in student of `fidelity`: exact targets plus noise of this RMS relative to theirs
FIDELITY_SEED = 0


def quantise(x: Tensor) -> tuple[Tensor, Tensor]:
    """(..., D) -> int8 values and float32 scales (...): per row, scale = absmax / 127 (1 for a zero row, which
    stays zero), values = round(x / scale). One scale per token and layer keeps an outlier token's range off
    the others'; x ~ values * scale."""
    x = x.float()
    scale = x.abs().amax(-1) / 127
    scale = torch.where(scale > 0, scale, 1.0)
    return (x / scale[..., None]).round().clamp(-127, 127).to(torch.int8), scale


def fit(x: Tensor, rank: int) -> Tensor:
    """Vectors (B, L, T, D) -> the basis (L, 1 + r, D) float32: row 0 each layer's mean, then its r leading
    principal directions (r = min(rank, D)), largest variance first. The covariance and its eigenvectors are
    float64, so the directions do not depend on the order of the batch's tokens."""
    x = x.detach().double().transpose(0, 1).flatten(1, 2)  # (L, N, D)
    mean = x.mean(1, keepdim=True)
    centred = x - mean
    vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred / x.shape[1]).eigenvectors  # ascending
    directions = vectors[..., -min(rank, x.shape[-1]):].flip(-1).transpose(1, 2)  # (L, r, D)
    return torch.cat([mean, directions], 1).float()


def explained(x: Tensor, basis: Tensor) -> list[float]:
    """The share of each layer's variance (about its mean) in vectors `x` (B, L, T, D) that `basis` spans."""
    centred = x.float() - basis[:, :1]
    kept = (centred @ basis[:, 1:].transpose(1, 2)).square().sum((0, 2, 3))
    return (kept / centred.square().sum((0, 2, 3)).clamp_min(1e-30)).tolist()


def encode(x: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """Vectors (B, L, T, D) -> int8 coefficients (B, L, T, r) and float32 scales (B, L, T) in `basis`."""
    return quantise((x.float() - basis[:, :1]) @ basis[:, 1:].transpose(1, 2))


def decode(coefficients: Tensor, scale: Tensor, basis: Tensor) -> Tensor:
    """`encode`'s coefficients and scales (as float32) -> vectors (B, L, T, D)."""
    return torch.matmul(coefficients * scale[..., None], basis[:, 1:]) + basis[:, :1]


def _student(x: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + STUDENT_DISTANCE * x.square().mean().sqrt() * noise


def _loss_and_grad(name: str, student: Tensor, target: Tensor, input_ids: Tensor) -> tuple[float, Tensor]:
    s = student.detach().requires_grad_(True)
    field = {"hidden": "hidden", "attention_qk": "attentions", "qkv": "qkv"}[name]
    loss = {"hidden": hidden_mse, "attention_qk": attention_kl, "qkv": relation}[name](
        StudentOutputs(logits=s.new_empty(0), **{field: s}), Targets(input_ids, **{field: target}),
        torch.ones_like(input_ids, dtype=torch.bool))
    (grad,) = torch.autograd.grad(loss, s)
    return float(loss.detach()), grad


def fidelity(exact: dict[str, Tensor], stored: dict[str, Tensor], heads: Heads | None, input_ids: Tensor) -> dict:
    """Per layered component: the stored vectors' relative RMS error against the exact (float32) ones, and the
    relative error of the component's loss (hidden_mse, attn_kl, relation) and of its gradient with respect to a
    stand-in student's activations (the exact targets plus seeded noise of `STUDENT_DISTANCE` relative RMS;
    for maps, the maps of noisy q/k), stored targets against exact ones."""
    generator = torch.Generator().manual_seed(FIDELITY_SEED)
    out = {}
    for name, x in exact.items():
        x, y = x.float(), stored[name].float()
        rel_rmse = float((y - x).norm() / x.norm())
        student = _student(x, generator)
        if name == "attention_qk":
            x, y, student = (attention.stored_maps(v, heads) for v in (x, y, student))
        elif name == "qkv":
            x, y, student = (attention.vectors(*attention.unpack(v, heads, "qkv")) for v in (x, y, student))
        loss_x, grad_x = _loss_and_grad(name, student, x, input_ids)
        loss_y, grad_y = _loss_and_grad(name, student, y, input_ids)
        out[name] = {"rel_rmse": rel_rmse,
                     "loss_rel_err": abs(loss_y - loss_x) / abs(loss_x),
                     "grad_rel_err": float((grad_y - grad_x).norm() / grad_x.norm())}
    return out
