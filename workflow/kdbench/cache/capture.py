"""The teacher's side of distillation: run it once over the training tokens and capture what the arms read.

`teacher_arrays` turns one teacher forward pass into the targets of every arm (top-k log-probs
with the tail mass, and the mapped layers' hidden states, attention maps and q/k/v), in the
dtypes the cache stores; `cache_teacher` is the job that writes them for every training
sequence a student will see (the storage format is `kdbench.cache.store`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kdbench import KdbenchError
from kdbench.models import attention
from kdbench.schema.arms import ArmConfig, Capture, capture_for
from kdbench.models.attention import Heads
from kdbench.cache import compact
from kdbench.cache.compact import encode, fit, quantise
from kdbench.cache.store import TORCH_DTYPES, converted, stored, stored_ids, to_targets, write_cache
from kdbench.schema.config import LAYERED, CacheConfig
from kdbench.data.tokens import load_tokens
from kdbench.devices import bf16_autocast, device_for_rank, world
from kdbench.losses import Targets, flat_ids, zero_at
from kdbench.models.causal_lm import (Taps, blocks, check_attention_formula, forward_taps, load_model, load_tokenizer,
                            trim_to_tokenizer, vocabulary_sha256, width)
from kdbench.provenance import weights_sha256


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries along the last dim, sorted, and their indices: `Tensor.topk`, in two levels.

    Deal the V entries into n blocks of b (block j holds entries j, j + n, j + 2n, ...): the k
    largest entries lie in the k blocks with the largest maxima, so a top-k over n maxima and one
    over those blocks' k * b entries replace the top-k over V (b ~ sqrt(V / k), a power of two:
    measured 15% faster than b = 5 at V = 1024, k = 32). Values equal `x.topk(k)` exactly; among
    tied values the indices may differ.
    """
    v = x.shape[-1]
    b = 1 << (math.isqrt(v // max(k, 1)).bit_length() - 1) if v >= k else 1
    if b < 2:  # as many blocks as entries to keep: no gain
        return x.topk(k, dim=-1)
    n = v // b
    maxima = x[..., : n * b].unflatten(-1, (b, n)).amax(-2)  # (..., n): elementwise over b rows, no strided reduce
    blocks = maxima.topk(k, dim=-1, sorted=False).indices  # (..., k)
    cols = (blocks.unsqueeze(-1) + n * torch.arange(b, device=x.device)).flatten(-2)  # (..., k * b)
    if n * b < v:  # the entries left over are always candidates
        cols = torch.cat([cols, torch.arange(n * b, v, device=x.device).expand(*cols.shape[:-1], -1)], -1)
    values, j = x.gather(-1, cols).topk(k, dim=-1)
    return values, cols.gather(-1, j)


def topk_targets(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, V) logits -> top-k log-probs (B, T, k), ids (B, T, k), tail log-mass (B, T)."""
    logits = logits.float()
    top, ids = topk(logits, k)
    p = torch.softmax(logits, dim=-1)  # one fused pass (max, exp, sum): measured 2x faster than sub + exp
    flat = flat_ids(p, ids)
    p_top = p.take(flat)  # p_top[..., 0] = 1 / sum exp(z - peak) >= 1 / V: its log never underflows
    rest = zero_at(p, flat).sum(-1)  # a sum of positives: exact, no 1 - sum cancellation
    log_total = (rest + p_top.sum(-1)).log()  # ~0: renormalises to the kept terms exactly
    values = top - top[..., :1] + (p_top[..., :1].log() - log_total[..., None])  # log p in log space: no underflow
    return values, ids, rest.log() - log_total


def reconstruction_kl(logits: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
    """Per-position KL(full teacher || top-k + uniform tail reconstruction), in nats.

    `values, ids, tail` are `topk_targets(logits, k)`. Summed as -H(p) minus p's cross terms with
    the k kept log-probs and with the tail's even share, so it takes two passes over V, not a V-wide q.
    """
    v, k = logits.shape[-1], ids.shape[-1]
    if k >= v:
        return torch.zeros(logits.shape[:-1])
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    neg_entropy = torch.nansum(p * logp, -1)  # 0 * log 0 (a -inf logit) is NaN: counts 0
    flat = flat_ids(p, ids)
    p_rest = zero_at(p, flat).sum(-1)  # the true mass outside the top-k
    tail_term = torch.where(tail > -math.inf, p_rest * (tail - math.log(v - k)), 0.0)  # an empty tail counts 0
    return neg_entropy - (logp.take(flat).exp() * values).sum(-1) - tail_term


@torch.no_grad()
def teacher_taps(teacher, seqs: np.ndarray, cfg: CacheConfig, capture: Capture, device: str) -> Taps:
    ids = torch.from_numpy(seqs.astype(np.int64)).to(device)
    with bf16_autocast(device, cfg.forward_dtype == "bfloat16"):
        return forward_taps(teacher, ids, **asdict(capture))


def _gathered(layers: list[tuple[torch.Tensor, ...]], dtype: torch.dtype) -> torch.Tensor:
    """Per layer, its parts ((B, T, D), or heads (B, T, n, hd)) side by side -> (B, L, T, width) in `dtype`, each
    value copied and cast once: the casts, `cat`s and `stack`s that copied q/k/v three times took 13% of a
    profiled cache write."""
    b, t = layers[0][0].shape[:2]
    sizes = [math.prod(p.shape[2:]) for p in layers[0]]
    out = torch.empty(b, len(layers), t, sum(sizes), dtype=dtype, device=layers[0][0].device)
    for layer, parts in enumerate(layers):
        for part, dest in zip(parts, out[:, layer].split(sizes, -1)):
            dest.unflatten(-1, part.shape[2:]).copy_(part)
    return out


def _vectors(taps: Taps, dtype: torch.dtype, dtypes: dict[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    """The layered components (B, L, T, width) in `dtype`, or a component's own in `dtypes`: hidden states, and
    q|k and q|k|v side by side (the layout of `Recorded.packed`), as the cache stores them."""
    dtypes = dtypes or {}
    out = {"hidden": _gathered([(x,) for x in taps.hidden], dtypes.get("hidden", dtype))} if taps.hidden else {}
    for name, recorded, parts in (("attention_qk", taps.attentions, "qk"), ("qkv", taps.qkv, "qkv")):
        if recorded:
            out[name] = _gathered([tuple(getattr(r, p).transpose(1, 2) for p in parts) for r in recorded],
                                  dtypes.get(name, dtype))
    return out


def _layered(taps: Taps, cfg: CacheConfig, bases: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, str]]:
    """The layered components as stored: one with a basis in `bases` as int8 coefficients (`compact.encode`) and
    their `<name>_scale`; the others q/k/v in float16, hidden states in `cache.hidden_dtype` (int8 with
    `hidden_scale`)."""
    int8 = cfg.hidden_dtype == "int8"
    hidden = torch.float32 if int8 else TORCH_DTYPES[cfg.hidden_dtype]
    out = {}
    for name, x in _vectors(taps, torch.float16, {"hidden": hidden} | dict.fromkeys(bases, torch.float32)).items():
        if name in bases:
            values, scale = encode(x, bases[name])
            out |= {name: (values, "int8"), f"{name}_scale": (scale, "float32")}
        elif name == "hidden" and int8:
            values, scale = quantise(x)
            out |= {"hidden": (values, "int8"), "hidden_scale": (scale, "float32")}
        else:
            out[name] = (x, cfg.hidden_dtype if name == "hidden" else "float16")
    return out


def fit_bases(taps: Taps, cfg: CacheConfig) -> dict[str, torch.Tensor]:
    """Each layered component's per-layer basis (`compact.fit`) at its `cache.layer_rank` on the sample batch
    `taps`; none for a component of rank 0."""
    if not compacted(cfg):
        return {}
    return {name: fit(x, cfg.rank(name)) for name, x in _vectors(taps, torch.float32).items() if cfg.rank(name)}


def compacted(cfg: CacheConfig) -> bool:
    """Whether `cache.layer_rank` compacts any layered component."""
    return any(cfg.rank(name) for name in LAYERED)


def sample_bases(teacher, tokens: np.ndarray, cfg: CacheConfig, capture: Capture, device: str) -> dict[str, torch.Tensor]:
    """The compact bases of the cache job and of the online teacher alike: fitted on the first batch of `tokens`."""
    return fit_bases(teacher_taps(teacher, tokens[: cfg.batch_size], cfg, capture, device), cfg) if compacted(cfg) else {}


def teacher_tensors(teacher, seqs: np.ndarray, k: int, cfg: CacheConfig, capture: Capture, device: str,
                    bases: dict[str, torch.Tensor] | None = None) -> dict[str, tuple[torch.Tensor, str]]:
    """One teacher forward pass over `seqs` (B, T) -> {component: (tensor in its stored dtype, dtype name)}, on
    the teacher's device; top-k ids as int64 (the cache narrows them), layered components as `_layered`
    stores them (in `bases` when compact)."""
    taps = teacher_taps(teacher, seqs, cfg, capture, device)
    values, top_ids, tail = topk_targets(taps.logits, k)
    out = {"topk_logprobs": (values.half(), "float16"), "topk_ids": (top_ids, "int64"),
           "tail_logprob": (tail.float(), "float32")}
    return out | _layered(taps, cfg, bases or {})


def teacher_arrays(teacher, seqs: np.ndarray, k: int, cfg: CacheConfig, capture: Capture, device: str,
                   bases: dict[str, torch.Tensor] | None = None) -> dict[str, tuple[np.ndarray, str]]:
    """One teacher forward pass over `seqs` (B, T) -> {component: (array, stored dtype)}, as the cache writes them."""
    tensors = teacher_tensors(teacher, seqs, k, cfg, capture, device, bases)
    vocab = teacher.config.vocab_size
    top_ids, _ = tensors.pop("topk_ids")
    arrays = {"input_ids": stored_ids(seqs, vocab), "topk_ids": stored_ids(top_ids.cpu().numpy(), vocab)}
    arrays.update({name: stored(t, dtype) for name, (t, dtype) in tensors.items()})
    return arrays


class OnlineTeacher:
    """A batch source that runs the teacher inside the student's job (online distillation, no cache).

    The targets are the cache's: the same forward (eval mode, no grad, `cfg.forward_dtype`), top-k,
    tail and layers, rounded to the cache's storage dtypes and converted as the reader converts them;
    compact layer targets in the bases the cache job would fit (on the same first batch).
    """

    def __init__(self, teacher, tokens: np.ndarray, k: int, cfg: CacheConfig, capture: Capture, device: str):
        self.teacher, self.tokens, self.k, self.cfg, self.capture, self.device = teacher, tokens, k, cfg, capture, device
        self.n_seqs, self.seq_len = tokens.shape
        teacher.eval().requires_grad_(False)
        self.heads = attention_heads(teacher, tokens, cfg, capture, device)
        self.bases = sample_bases(teacher, tokens, cfg, capture, device)

    def batch(self, idx: np.ndarray, device: str = "cpu") -> Targets:
        seqs = self.tokens[idx]
        tensors = teacher_tensors(self.teacher, seqs, self.k, self.cfg, self.capture, self.device, self.bases)
        parts = {"input_ids": torch.from_numpy(seqs.astype(np.int64)), **{n: t for n, (t, _) in tensors.items()}}
        return to_targets(parts, self.heads, device, self.bases)


def attention_heads(teacher, seqs: np.ndarray, cfg: CacheConfig, capture: Capture, device: str) -> Heads | None:
    """The geometry of the teacher's recorded attention layers (from one full-length sequence, so that a sliding
    window shorter than it shows), None without any; refuses layers that disagree. The window is the attention
    layers' (the maps' mask), not the q/k/v layers' (their relations have their own)."""
    taps = teacher_taps(teacher, seqs[:1], cfg, capture, device)
    shapes = {replace(r.heads, window=None) for r in taps.attentions + taps.qkv}
    windows = {r.window for r in taps.attentions}
    if len(shapes) > 1 or len(windows) > 1:
        raise KdbenchError(f"{teacher.config.model_type}: the captured layers differ in attention geometry "
                           f"({sorted(map(str, {r.heads for r in taps.attentions + taps.qkv}))})")
    return replace(shapes.pop(), window=windows.pop() if windows else None) if shapes else None


def layer_fidelity(taps: Taps, seqs: np.ndarray, cfg: CacheConfig, bases: dict[str, torch.Tensor]) -> dict:
    """What storing `taps`' layered components as `cfg` (and `bases`) says loses: per component, the stored vectors'
    error against float32 and the error of its loss and gradient (`compact.fidelity`); with `bases`, the variance
    they explain per layer; the hidden states' largest absolute error. {} without layered components."""
    exact = _vectors(taps, torch.float32)
    if not exact:
        return {}
    stored = {n: t for n, (t, _) in _layered(taps, cfg, bases).items()}
    read = converted(stored, str(taps.logits.device), bases)
    heads = (taps.attentions + taps.qkv)[0].heads if taps.attentions or taps.qkv else None
    out = {"layer_bytes_per_token": sum(t.numel() * t.element_size() for t in stored.values()) / seqs.size,
           "layers": compact.fidelity(exact, read, heads, torch.from_numpy(seqs.astype(np.int64)).to(taps.logits.device))}
    if bases:
        out |= {"layer_rank": cfg.layer_rank,
                "explained_variance": {name: compact.explained(exact[name], b) for name, b in bases.items()}}
    if "hidden" in exact:
        out |= {"hidden_dtype": "int8 coefficients" if "hidden" in bases else cfg.hidden_dtype,
                "hidden_rel_rmse": out["layers"]["hidden"]["rel_rmse"],
                "hidden_max_abs_err": float((read["hidden"] - exact["hidden"]).abs().max())}
    return out


def fidelity(teacher, seqs: np.ndarray, k: int, cfg: CacheConfig, capture: Capture, device: str,
             bases: dict[str, torch.Tensor] | None = None) -> dict:
    """How much the cache loses, on the sample batch `seqs`: KL(full || top-k + uniform tail), the tail mass,
    the layered components' `layer_fidelity` in `bases` (fitted on `seqs` when not given) and, with attention
    layers, how far maps derived from the stored q/k are from the teacher's own (eager kernel).

    Refuses a teacher whose maps are not the derivation's formula (`kdbench.models.attention`).
    """
    taps = teacher_taps(teacher, seqs, cfg, capture, device)
    bases = fit_bases(taps, cfg) if bases is None else bases
    values, top_ids, tail = topk_targets(taps.logits, k)
    kl = reconstruction_kl(taps.logits, values, top_ids, tail)
    out = {"top_k": k, "kl_topk_mean": float(kl.mean()), "tail_mass_mean": float(tail.exp().mean()),
           "n_positions": kl.numel(), **layer_fidelity(taps, seqs, cfg, bases)}
    if taps.attentions:
        ids, maps = torch.from_numpy(seqs.astype(np.int64)).to(device), taps.maps()
        with bf16_autocast(device, cfg.forward_dtype == "bfloat16"):
            eager = check_attention_formula(teacher, ids, capture.attentions, maps, "cache: the teacher")
        stored = {n: t for n, (t, _) in _layered(taps, cfg, bases).items() if n.startswith("attention_qk")}
        from_cache = attention.stored_maps(converted(stored, str(maps.device), bases)["attention_qk"],
                                           taps.attentions[0].heads)
        out.update(attention_max_abs_err=float((from_cache - eager).abs().max()),
                   attention_formula_max_abs_err=float((maps - eager).abs().max()))
    return out


def write_teacher_cache(teacher, tokens: np.ndarray, identity: dict, cfg: CacheConfig, capture: Capture,
                        out_dir: Path, work_dir: Path, device: str = "cpu") -> dict:
    """Run `teacher` once over `tokens` (N, T) and write the cache; returns its manifest.

    `identity` names the teacher, tokenizer and tokens; the capture settings, vocabulary and k
    are added here, so a cache of other settings is never resumed or read as this one. fidelity.json is
    measured on the first batch; compact bases are fitted on it, and then measured on the second.
    """
    teacher.eval()
    if not getattr(teacher, "hf_device_map", None):  # a teacher spread over GPUs stays where it was put
        teacher.to(device)
    vocab = teacher.config.vocab_size
    k = min(cfg.top_k, vocab)
    settings = {**asdict(cfg), **asdict(capture)}
    settings.pop("batch_size")  # does not change the contents
    identity = {**identity, "vocab_size": vocab, "top_k": k, "settings": settings,
                "attention_heads": _as_dict(attention_heads(teacher, tokens, cfg, capture, device))}
    bases = sample_bases(teacher, tokens, cfg, capture, device)
    held_out = tokens[cfg.batch_size : 2 * cfg.batch_size] if bases else ()  # the bases' error where they were not fit
    sample = fidelity(teacher, held_out if len(held_out) else tokens[: cfg.batch_size], k, cfg, capture, device, bases)
    return write_cache(lambda start, stop: teacher_arrays(teacher, tokens[start:stop], k, cfg, capture, device, bases),
                       len(tokens), tokens.shape[1], cfg.shard_seqs, cfg.batch_size, identity, sample, out_dir,
                       work_dir, {name: b.cpu().numpy() for name, b in bases.items()})


def student_sequences(data_dir: Path, student_tokens: int) -> np.ndarray:
    """The training sequences a student's token budget covers: the first ceil(student_tokens / seq_len) (all
    if fewer); students draw seeded permutations of exactly these, from the cache or online."""
    tokens = load_tokens(Path(data_dir) / "train.npy")
    return np.ascontiguousarray(tokens[: math.ceil(student_tokens / tokens.shape[1])])


def _identity(teacher_dir: Path, teacher, tokens: np.ndarray) -> dict:
    """What names the targets; `vocab_size` is the tokenizer's (the distillation vocabulary), whatever rows the
    teacher's embedding matrix has (`teacher_embedding_rows`)."""
    tokenizer = load_tokenizer(teacher_dir)
    return {"teacher_sha256": weights_sha256(teacher_dir), "vocabulary_sha256": vocabulary_sha256(tokenizer),
            "vocab_size": len(tokenizer), "teacher_embedding_rows": teacher.config.vocab_size,
            "tokens_sha256": hashlib.sha256(tokens.tobytes()).hexdigest(),
            "teacher_layers": len(blocks(teacher)), "teacher_width": width(teacher)}


def load_teacher(teacher_dir: Path, tokens: np.ndarray) -> tuple[torch.nn.Module, str, dict]:
    """The teacher of a caching or online job over `tokens`: (model, the device its inputs go to, identity).

    A job that is one process and sees several GPUs spreads it over them (device_map "auto": a teacher
    too big for one GPU); otherwise it goes to the process's device (under torchrun each rank holds a
    copy, which spreading would not make smaller). Its rows past the tokenizer are cut off
    (`models.trim_to_tokenizer`), so no padded row is ever a target.
    """
    spread = torch.cuda.device_count() > 1 and world()[1] == 1
    teacher = load_model(teacher_dir, device_map="auto" if spread else None)
    if not spread:
        teacher.to(device_for_rank())
    identity = _identity(teacher_dir, teacher, tokens)
    trim_to_tokenizer(teacher, identity["vocab_size"], f"teacher {teacher_dir}")
    return teacher, str(teacher.get_input_embeddings().weight.device), identity


@dataclass(frozen=True)
class Online:
    """teacher.mode online: a student job computes its targets with these cache settings, over the sequences
    the cache would hold (the students' token budget, whatever a tuning trial trains on)."""
    cache: CacheConfig
    student_tokens: int


def online_teacher(teacher_dir: Path, data_dir: Path, online: Online, arm: ArmConfig,
                   n_student_layers: int) -> tuple[OnlineTeacher, dict]:
    """An arm's teacher targets computed in its own job; returns the source and what a cache manifest would
    say about it (identity, vocabulary, top_k, capture settings), so students check both alike."""
    tokens, cfg = student_sequences(data_dir, online.student_tokens), online.cache
    teacher, device, identity = load_teacher(teacher_dir, tokens)
    capture = capture_for({"arm": arm}, n_student_layers, identity["teacher_layers"])
    k = min(cfg.top_k, identity["vocab_size"])
    source = OnlineTeacher(teacher, tokens, k, cfg, capture, device)
    manifest = {**identity, "top_k": k, "settings": asdict(capture), "attention_heads": _as_dict(source.heads)}
    return source, manifest


def _as_dict(heads: Heads | None) -> dict | None:
    return asdict(heads) if heads else None


def cache_teacher(teacher_dir: Path, data_dir: Path, cfg: CacheConfig, arms: dict[str, ArmConfig],
                  n_student_layers: int, student_tokens: int, out_dir: Path, work_dir: Path) -> dict:
    """Cache what the arms need from the teacher over the sequences a student's token budget covers."""
    tokens = student_sequences(data_dir, student_tokens)
    teacher, device, identity = load_teacher(teacher_dir, tokens)
    capture = capture_for(arms, n_student_layers, identity["teacher_layers"])
    return write_teacher_cache(teacher, tokens, identity, cfg, capture, out_dir, work_dir, device)
