"""The planner: a cache's bytes, every arm's FLOPs and GPU-hours, from model configs alone (no weights).

`plan(exp, described)` takes the experiment and the pretrained models' descriptions (the
meta-device reading of their config.json, `checks.check_models`); models trained or built here are
sized from their `arch` section. The workflow runs it at parse time (`teacher_mode`: refuse a cache
above `cache.max_gb`, and resolve `teacher.mode: auto`); `kdbench plan` prints it. Parse-time
module: stdlib only.

FLOPs are estimates in the usual form: a forward pass costs 2 N per token plus 2 n_layer T d for
attention scores and their mix (N: the weights a token is multiplied by, the output head included,
the input embedding lookup not), a training step three forwards. Distillation adds the hidden-state
projector (6 d_s d_t per token and mapped layer) and the relation loss's T x T products; the
logit terms and the attention KL are elementwise passes over tensors the forward already made
(a few flops per entry) and are not counted. Evaluation is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdbench import KdbenchError
from kdbench.schema.arms import LOGIT_COMPONENTS, STORED_AS, capture_for

PEAK_TFLOPS = 989.0  # bf16 dense peak of an H100 / H200 SXM
DEFAULT_TFLOPS = 400.0  # that peak at about 40% model FLOPs utilisation
NPY_HEADER = 128  # bytes before each .npy file's data (format 1.0 pads its header to 128)
_FP16, _FP32 = 2, 4


@dataclass(frozen=True)
class Shape:
    """What the plan needs to know of a model."""
    n_layer: int
    width: int           # hidden size: the bytes of a cached hidden state
    heads: int           # query heads
    head_dim: int
    kv_heads: int        # key/value heads: fewer than the query heads under grouped- or multi-query attention
    vocab_size: int      # rows of the embedding matrix (padded past the tokenizer in some families)
    compute_params: int  # weights a token is multiplied by: every matrix plus the output head

    def forward_flops(self, seq_len: int) -> float:
        """FLOPs of one forward pass per token at context `seq_len`."""
        return 2 * self.compute_params + 2 * self.n_layer * seq_len * self.heads * self.head_dim


def arch_shape(arch, vocab_size: int) -> Shape:
    """The shape of a model built here from an `ArchConfig` (`models.build_model`)."""
    d, ff = arch.d_model, arch.d_ff or 4 * arch.d_model
    mlp = (3 if arch.family == "llama" else 2) * d * ff  # llama's gated MLP has three matrices
    return Shape(arch.n_layer, d, arch.n_head, d // arch.n_head, arch.n_head, vocab_size,
                 arch.n_layer * (4 * d * d + mlp) + vocab_size * d)


def described_shape(info: dict) -> Shape:
    """The shape of a pretrained model from `models.describe`."""
    return Shape(info["n_layer"], info["width"], info["heads"] or 0, info["head_dim"] or 0, info["kv_heads"] or 0,
                 info["vocab_size"], info["compute_params"])


def id_bytes(vocab_size: int) -> int:
    """Bytes of one cached token id: 1, 2 or 3, the fewest that hold every id (`cache.stored_ids`)."""
    if vocab_size > 1 << 24:
        raise KdbenchError(f"vocabulary of {vocab_size:,} tokens: the teacher cache stores token ids in 24 bits, "
                           f"at most {1 << 24:,} tokens")
    return next(b for b in (1, 2, 3) if vocab_size <= 1 << (8 * b))


@dataclass(frozen=True)
class Plan:
    teacher: Shape
    student: Shape
    seq_len: int
    n_seqs: int                          # cached sequences: those the students' token budget covers
    n_shards: int
    bytes_per_token: dict[str, float]    # per cache component
    basis_bytes: float                   # compact layer targets' bases (`cache.layer_rank`), once per cache
    arm_bytes_per_token: dict[str, float]  # per arm: the components it reads (what a cache for it alone would hold)
    layers: dict[str, int]               # cached teacher layers per layered component
    student_flops: dict[str, float]      # per arm, all seeds and tuning trials together
    teacher_flops: dict[str, float]      # per arm, the same tokens, when the teacher runs online
    cache_flops: float                   # the teacher over the cached tokens, once
    teacher_train_flops: float           # training a teacher here (0 when imported)
    mode: str                            # "cache" | "online": teacher.mode with "auto" resolved
    max_gb: float

    @property
    def cache_bytes(self) -> float:
        """The whole cache on disk: every component's data plus a .npy header per shard file."""
        data = sum(self.bytes_per_token.values()) * self.n_seqs * self.seq_len
        return data + NPY_HEADER * self.n_shards * len(self.bytes_per_token) + self.basis_bytes

    def flops(self) -> float:
        """Everything the DAG computes on GPUs but evaluation, in the resolved mode."""
        arms = sum(self.student_flops.values()) + (sum(self.teacher_flops.values()) if self.mode == "online" else 0)
        return self.teacher_train_flops + arms + (self.cache_flops if self.mode == "cache" else 0)


def plan(exp, described: dict[str, dict | None]) -> Plan:
    """The plan of `exp`; `described` is `checks.check_models`'s answer ({"teacher": ..., "student": ...})."""
    if exp.trains_teacher:
        teacher = arch_shape(exp.teacher.arch, exp.tokenizer.vocab_size)
    elif described.get("teacher"):
        teacher = described_shape(described["teacher"])
    else:
        raise KdbenchError(f"teacher.source: no config.json of {exp.teacher.source!r} at hand (hub cache or "
                           "config/models/), so nothing can be planned")
    # Built here, a student has the teacher's embedding rows (teacher_layers) or the tokenizer's ids (random): those
    # are unknown here but at most the rows, as are the ids the cache stores; the difference is a family's padding.
    student = (described_shape(described["student"]) if described.get("student")
               else arch_shape(exp.student.arch, teacher.vocab_size))
    seq_len, train = exp.data.seq_len, exp.student.train
    n_seqs = math.ceil(train.tokens / seq_len)
    capture = capture_for(exp.arms, student.n_layer, teacher.n_layer)
    k = min(exp.cache.top_k, teacher.vocab_size)
    qk = teacher.heads + teacher.kv_heads  # query heads, then key heads, of head_dim each
    widths = {"hidden": teacher.width, "attentions": qk * teacher.head_dim, "qkv": (qk + teacher.kv_heads) * teacher.head_dim}
    # compact: int8 coefficients and a float32 scale per token and layer
    ranks = {name: exp.cache.rank(STORED_AS.get(name, name)) for name in widths}
    int8 = {name: bool(ranks[name]) or (name == "hidden" and exp.cache.hidden_dtype == "int8") for name in widths}
    per_token = {"input_ids": id_bytes(teacher.vocab_size), "topk_logprobs": k * _FP16,
                 "topk_ids": k * id_bytes(teacher.vocab_size), "tail_logprob": _FP32}
    layers, basis_bytes = {}, 0.0
    for name, w in widths.items():
        n, stored = len(getattr(capture, name)), STORED_AS.get(name, name)
        if not n:
            continue
        layers[stored] = n
        rank = ranks[name]
        per_token[stored] = n * (min(rank, w) if rank else w * (1 if int8[name] else _FP16))
        if int8[name]:
            per_token[f"{stored}_scale"] = n * _FP32
        if rank:  # each layer's mean and directions, float32
            basis_bytes += NPY_HEADER + n * (1 + min(rank, w)) * w * _FP32
    arm_bytes = {name: sum(b for c, b in per_token.items() if c.removesuffix("_scale") in arm.components)
                 for name, arm in exp.arms.items() if arm.uses_teacher}

    tuning = exp.tuning.trials * exp.tuning.tokens if exp.tuning.enabled else 0
    tokens = len(exp.seeds) * train.steps(seq_len) * train.batch_size * seq_len + tuning  # what each arm trains on
    student_flops, teacher_flops = {}, {}
    for name, arm in exp.arms.items():
        pairs = len(arm.pairs(student.n_layer, teacher.n_layer))
        extra = 0.0
        if "hidden" in arm.reads and arm.projection == "linear":
            extra += pairs * 6 * student.width * teacher.width
        if "qkv" in arm.reads:  # 3 relations, T x T products: the student's trained, the teacher's forward only
            extra += pairs * 3 * 2 * seq_len * (3 * student.width + teacher.width)
        student_flops[name] = tokens * (3 * student.forward_flops(seq_len) + extra)
        teacher_flops[name] = tokens * teacher.forward_flops(seq_len) if arm.uses_teacher else 0.0
    teacher_train = (6 * teacher.compute_params * exp.teacher.train.tokens) if exp.trains_teacher else 0.0
    out = Plan(teacher, student, seq_len, n_seqs, math.ceil(n_seqs / exp.cache.shard_seqs), per_token, basis_bytes,
               arm_bytes, layers, student_flops, teacher_flops, n_seqs * seq_len * teacher.forward_flops(seq_len), teacher_train,
               "cache", exp.cache.max_gb)
    mode = exp.teacher.mode
    if mode == "auto":
        mode = "cache" if out.cache_bytes <= exp.cache.max_gb * 1e9 else "online"
    return Plan(**{**out.__dict__, "mode": mode})


def teacher_mode(exp, described: dict[str, dict | None]) -> str:
    """The teacher mode the DAG runs ("auto" resolved by the plan), after refusing a cache above `cache.max_gb`.

    A hub teacher whose config.json is not at hand cannot be planned: "cache" and "online" then run as
    configured (the import job fetches it), "auto" is refused.
    """
    if not exp.trains_teacher and not described.get("teacher"):
        if exp.teacher.mode == "auto":
            raise KdbenchError(f"teacher.mode: 'auto' needs the plan, and no config.json of {exp.teacher.source!r} is "
                               "at hand (hub cache or config/models/); set teacher.mode cache or online")
        return exp.teacher.mode
    p = plan(exp, described)
    if p.mode == "cache" and p.cache_bytes > p.max_gb * 1e9:
        raise KdbenchError(f"cache.max_gb: the planned teacher cache is {_si(p.cache_bytes, 'B')}, above the limit "
                           f"of {_si(p.max_gb * 1e9, 'B')}; set teacher.mode online or auto, shrink the budget, or raise the "
                           "limit (kdbench plan shows the breakdown)")
    return p.mode


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {prefix}{unit}"
    return f"{x:,.0f} {unit}"


def _shape(s: Shape) -> str:
    return (f"{s.n_layer} layers x {s.width}, {s.heads} heads of {s.head_dim}, vocab {s.vocab_size:,}, "
            f"{s.compute_params / 1e6:,.1f}M compute params")


def render(p: Plan, experiment: str, tflops: float = DEFAULT_TFLOPS) -> str:
    """The plan as text: cache bytes per component, FLOPs and GPU-hours per arm."""
    hours = 1 / (tflops * 1e12 * 3600)
    lines = [f"plan of {experiment!r} (estimates from model configs; no weights read)",
             f"teacher: {_shape(p.teacher)}", f"student: {_shape(p.student)}",
             f"teacher cache: {p.n_seqs:,} sequences x {p.seq_len} tokens = {p.n_seqs * p.seq_len:,} tokens, "
             f"{p.n_shards:,} shards",
             f"  {'component':<19}{'layers':>7}{'bytes/token':>14}{'disk':>14}"]
    for name, b in p.bytes_per_token.items():
        layers = str(p.layers.get(name, "")) if name not in LOGIT_COMPONENTS + ("input_ids",) else ""
        lines.append(f"  {name:<19}{layers:>7}{b:>14,.1f}{_si(b * p.n_seqs * p.seq_len, 'B'):>14}")
    if p.basis_bytes:
        lines.append(f"  {'bases':<19}{'':>7}{'':>14}{_si(p.basis_bytes, 'B'):>14}   (cache.layer_rank: per-layer PCA, once)")
    lines.append(f"  {'total':<19}{'':>7}{sum(p.bytes_per_token.values()):>14,.1f}{_si(p.cache_bytes, 'B'):>14}"
                 f"   (cache.max_gb {p.max_gb:g}: teacher.mode -> {p.mode})")
    lines.append(f"compute at {tflops:g} TFLOPS effective per GPU (default {DEFAULT_TFLOPS:g}: bf16 on an H100 SXM at "
                 f"40% MFU); per arm, every seed and tuning trial, evaluation not counted:")
    lines.append(f"  {'arm':<20}{'reads B/token':>14}{'student FLOPs':>16}{'teacher online':>16}{'GPU-h cached':>14}"
                 f"{'GPU-h online':>14}")
    for name, s in p.student_flops.items():
        t, b = p.teacher_flops[name], p.arm_bytes_per_token.get(name)
        lines.append(f"  {name:<20}{'-' if b is None else f'{b:,.0f}':>14}{_si(s, 'FLOP'):>16}{_si(t, 'FLOP'):>16}"
                     f"{s * hours:>14,.2f}{(s + t) * hours:>14,.2f}")
    if p.teacher_train_flops:
        lines.append(f"  teacher training: {_si(p.teacher_train_flops, 'FLOP')}, {p.teacher_train_flops * hours:,.2f} GPU-h")
    lines.append(f"  teacher cache pass (once): {_si(p.cache_flops, 'FLOP')}, {p.cache_flops * hours:,.2f} GPU-h")
    lines.append(f"total in mode {p.mode}: {_si(p.flops(), 'FLOP')}, {p.flops() * hours:,.2f} GPU-hours")
    return "\n".join(lines)
