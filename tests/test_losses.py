"""Checks the distillation loss registry against independent reference computations.

Every registered loss is run through generic checks (finite, differentiable, all-masked
batch gives exactly 0, masked positions ignored, zero when the student is the teacher).
Logit losses are compared with full-vocabulary formulas written here (at k == V the
top-k buckets must reproduce them exactly), with a hand-computed value, and with the
lower-bound property for k < V. CE, hidden, attention and relation losses are compared
with direct torch / loop references. Run: .venv/bin/python -m pytest tests/test_losses.py
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from kdbench import KdbenchError
from kdbench.losses import HiddenProjector, StudentOutputs, Targets, _StudentLogits, get_loss, logit_pass, loss_kwargs
from kdbench.schema.registry import READS, register, specs, table

LOSSES = specs()

B, T, V, L, D, H = 2, 5, 7, 2, 8, 2
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
LOGIT_LOSSES = sorted(n for n, s in LOSSES.items() if s.reads == ("logits",))
DIVERGENCES = sorted(set(LOSSES) - {"ce"})  # zero when the student equals the teacher


def causal_softmax(scores):
    """Attention probabilities from (..., T, T) scores, zero above the diagonal."""
    n = scores.shape[-1]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, -math.inf).softmax(-1)


def topk_targets(teacher_logits, k, input_ids):
    """Top-k cache fields computed the way the teacher cache does, at temperature 1."""
    logp = teacher_logits.log_softmax(-1)  # (B, T, V)
    top, ids = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, ids, -math.inf)
    return Targets(input_ids=input_ids, topk_logprobs=top, topk_ids=ids, tail_logprob=rest.logsumexp(-1))


def make_batch(seed, *, k=V, identical=False):
    """(leaves, student, targets): random student leaves with grad, and a matching teacher."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    leaves = {
        "logits": (2 * rand(B, T, V)).requires_grad_(),
        "hidden": rand(B, L, T, D).requires_grad_(),
        "scores": rand(B, L, H, T, T).requires_grad_(),
        "qkv": rand(B, L, 3, T, D).requires_grad_(),
    }
    teacher = {name: leaf.detach().clone() if identical else rand(*leaf.shape) for name, leaf in leaves.items()}
    student = student_from(leaves)
    targets = topk_targets(teacher["logits"], k, torch.randint(V, (B, T), generator=gen))
    targets.hidden, targets.qkv = teacher["hidden"], teacher["qkv"]
    targets.attentions = causal_softmax(teacher["scores"])
    return leaves, student, targets


def student_from(leaves):
    return StudentOutputs(
        logits=leaves["logits"],
        hidden=leaves["hidden"],
        attentions=causal_softmax(leaves["scores"]),
        qkv=leaves["qkv"],
    )


def perturb(leaves, b, t):
    """Copies of the student leaves with position t of sequence b replaced by large noise."""
    gen = torch.Generator().manual_seed(99)
    out = {name: leaf.detach().clone() for name, leaf in leaves.items()}
    out["logits"][b, t] = 10 * torch.randn(V, generator=gen)
    out["hidden"][b, :, t] = 10 * torch.randn(L, D, generator=gen)
    out["scores"][b, :, :, t] = 10 * torch.randn(L, H, T, generator=gen)  # query row t
    out["qkv"][b, :, :, t] = 10 * torch.randn(L, 3, D, generator=gen)
    return out


# --- generic checks over every registered loss ---------------------------------------


@pytest.mark.parametrize("k", [3, V])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_and_differentiable(name, k):
    leaves, student, targets = make_batch(0, k=k)
    loss = get_loss(name)(student, targets, MASK)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [leaf.grad for leaf in leaves.values() if leaf.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("k", [3, V])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_masked_gives_exact_zero(name, k):
    leaves, student, targets = make_batch(1, k=k)
    loss = get_loss(name)(student, targets, torch.zeros(B, T, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves.values() if leaf.grad is not None)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_positions_are_ignored(name):
    leaves, student, targets = make_batch(2, k=3)
    fn = get_loss(name)
    loss = fn(student, targets, MASK)
    for b, t in zip(*torch.nonzero(~MASK, as_tuple=True)):
        assert torch.allclose(fn(student_from(perturb(leaves, b, t)), targets, MASK), loss, rtol=1e-6, atol=0)
    # the same change at a counted position does move the loss, so the check above can fail
    assert not torch.allclose(fn(student_from(perturb(leaves, 0, 1)), targets, MASK), loss)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergence_vanishes_when_student_is_teacher(name, temperature):
    _, student, targets = make_batch(3, identical=True)
    hyper = loss_kwargs(name, {"temperature": temperature})
    assert abs(get_loss(name)(student, targets, MASK, **hyper).item()) < 1e-6


@pytest.mark.parametrize("name", DIVERGENCES)
def test_missing_target_names_the_loss(name):
    _, student, _ = make_batch(4)
    with pytest.raises(KdbenchError, match=f"loss '{name}' needs"):
        get_loss(name)(student, Targets(input_ids=torch.zeros(B, T, dtype=torch.long)), MASK)


# --- logit distillation ---------------------------------------------------------------


def full_divergence(name, teacher_logits, student_logits, temperature, beta=0.5):
    """T^2 * the divergence on full-vocabulary distributions, averaged over MASK."""
    p = (teacher_logits / temperature).softmax(-1)[MASK]  # (N, V)
    q = (student_logits / temperature).softmax(-1)[MASK]  # (N, V)
    if name == "fkl":
        per_pos = (p * (p / q).log()).sum(-1)
    elif name == "rkl":
        per_pos = (q * (q / p).log()).sum(-1)
    elif name == "jsd":
        m = beta * p + (1 - beta) * q
        per_pos = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    else:
        per_pos = 0.5 * (p - q).abs().sum(-1)
    return temperature**2 * per_pos.mean()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fkl_at_full_k_equals_kl_div(temperature):
    leaves, student, targets = make_batch(5)
    t_logits = torch.randn(B, T, V, generator=torch.Generator().manual_seed(6))
    targets = topk_targets(t_logits, V, targets.input_ids)
    expected = F.kl_div(
        (leaves["logits"] / temperature).log_softmax(-1),
        (t_logits / temperature).log_softmax(-1),
        reduction="none",
        log_target=True,
    ).sum(-1)[MASK].mean() * temperature**2
    got = get_loss("fkl")(student, targets, MASK, temperature=temperature)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("beta", [0.5, 0.2])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_logit_losses_at_full_k_match_full_vocabulary(name, temperature, beta):
    leaves, student, _ = make_batch(7)
    t_logits = torch.randn(B, T, V, generator=torch.Generator().manual_seed(8))
    targets = topk_targets(t_logits, V, None)
    hyper = loss_kwargs(name, {"temperature": temperature, "beta": beta})
    expected = full_divergence(name, t_logits, leaves["logits"].detach(), temperature, beta)
    assert torch.allclose(get_loss(name)(student, targets, MASK, **hyper), expected, atol=1e-5)


def test_fkl_hand_computed():
    # V = 3, k = 2: teacher top-2 probs 1/2 (token 2) and 1/4 (token 0), tail 1/4 (token 1).
    # Student logits all 0 -> 1/3 per token, so buckets (1/3, 1/3, 1/3).
    # KL = 1/2 ln(3/2) + 1/4 ln(3/4) + 1/4 ln(3/4) = 1/2 ln(9/8) = 0.0588915...
    targets = Targets(
        input_ids=torch.zeros(1, 1, dtype=torch.long),
        topk_logprobs=torch.tensor([[[0.5, 0.25]]]).log(),
        topk_ids=torch.tensor([[[2, 0]]]),
        tail_logprob=torch.tensor([[0.25]]).log(),
    )
    student = StudentOutputs(logits=torch.zeros(1, 1, 3))
    loss = get_loss("fkl")(student, targets, torch.ones(1, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.5 * math.log(9 / 8), abs=1e-6)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_uniform_tails_are_exact_at_any_temperature(name):
    """With flat tails on both sides, merging the tail loses nothing, even at T = 2."""
    gen = torch.Generator().manual_seed(9)
    t_logits, s_logits = torch.randn(2, B, T, V, generator=gen)
    t_logits[..., 3:] = -1.5  # tokens 0..2 stand well above the flat tail, so they are the top-3
    t_logits[..., :3] += 3
    s_logits[..., 3:] = 0.7
    targets = topk_targets(t_logits, 3, None)
    expected = full_divergence(name, t_logits, s_logits, 2.0)
    got = get_loss(name)(StudentOutputs(logits=s_logits), targets, MASK, **loss_kwargs(name, {"temperature": 2.0}))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_buckets_lower_bound_full_divergence(name):
    """Merging tokens cannot increase a divergence (T = 1, where the teacher buckets are exact)."""
    leaves, student, _ = make_batch(10)
    t_logits = torch.randn(B, T, V, generator=torch.Generator().manual_seed(11))
    full = full_divergence(name, t_logits, leaves["logits"].detach(), 1.0)
    for k in (1, 3, V - 2):
        assert get_loss(name)(student, topk_targets(t_logits, k, None), MASK) < full
    single_token_tail = get_loss(name)(student, topk_targets(t_logits, V - 1, None), MASK)
    assert torch.allclose(single_token_tail, full, atol=1e-5)  # merging one token loses nothing


def reference_buckets(logits, ids, temperature):
    """Student k+1-bucket log-probs through plain autograd: log_softmax, gather, logsumexp of the rest."""
    logp = (logits / temperature).log_softmax(-1)
    return torch.cat([logp.gather(-1, ids), logp.scatter(-1, ids, -math.inf).logsumexp(-1, keepdim=True)], -1)


@pytest.mark.parametrize("k, scale", [(1, 1.0), (3, 1.0), (V - 1, 1.0), (3, 30.0)])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("parts", ["both", "buckets", "ce"])
def test_student_logits_match_autograd_reference(k, scale, temperature, parts):
    """The fused logit pass's values and hand-written gradients equal plain autograd (float64): the
    NLL of `F.cross_entropy` and the reference buckets, alone or together, at each temperature path
    (1, 2, other), also for a confident student whose tail mass is ~1e-20."""
    gen = torch.Generator().manual_seed(21)
    logits = (scale * torch.randn(B, T, V, generator=gen, dtype=torch.float64)).requires_grad_()
    ids = torch.randn(B, T, V, generator=gen).topk(k, dim=-1).indices if parts != "ce" else None
    labels = torch.randint(V, (B, T), generator=gen) if parts != "buckets" else None
    up_nll, up_b = torch.randn(B, T, generator=gen, dtype=torch.float64), torch.randn(B, T, k + 1, generator=gen,
                                                                                      dtype=torch.float64)

    def reference(x):
        nll = F.cross_entropy(x.transpose(1, 2), labels, reduction="none") if labels is not None else None
        return nll, reference_buckets(x, ids, temperature) if ids is not None else None

    def weighted(nll, buckets):
        return sum((v * u).sum() for v, u in ((nll, up_nll), (buckets, up_b)) if v is not None and v.numel())

    got = _StudentLogits.apply(logits, labels, ids, temperature)
    want = reference(logits)
    for g, w in zip(got, want):
        assert (w is None and not g.numel()) or torch.allclose(g, w, rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(weighted(*got), logits)
    (want_grad,) = torch.autograd.grad(weighted(*want), logits)
    assert torch.allclose(grad, want_grad, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda x: weighted(*_StudentLogits.apply(x, labels, ids, temperature)),
                                    (logits.detach().requires_grad_(),))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 1.5])
def test_shared_logit_pass_gives_the_separate_losses(temperature):
    """CE + fkl from one shared pass (as the trainer computes them) equal the two computed alone,
    in value and gradient."""
    leaves, student, targets = make_batch(22, k=3)
    fkl, ce = get_loss("fkl"), get_loss("ce")

    def total(s):
        return ce(s, targets, MASK) + fkl(s, targets, MASK, temperature=temperature)

    alone = total(student)
    (g_alone,) = torch.autograd.grad(alone, leaves["logits"])
    student.logit_pass = logit_pass(student.logits, targets, MASK, ce=True, buckets=True, temperature=temperature)
    shared = total(student)
    (g_shared,) = torch.autograd.grad(shared, leaves["logits"])
    assert torch.allclose(shared, alone, atol=1e-6) and torch.allclose(g_shared, g_alone, atol=1e-6)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_logit_loss_gradients_at_full_k_match_full_vocabulary(name):
    """At k == V the tail bucket is empty; gradients still equal the full-vocabulary formula's."""
    leaves, student, targets = make_batch(16)
    t_logits = torch.randn(B, T, V, generator=torch.Generator().manual_seed(17))
    targets = topk_targets(t_logits, V, None)
    hyper = loss_kwargs(name, {"temperature": 2.0})
    (got,) = torch.autograd.grad(get_loss(name)(student, targets, MASK, **hyper), leaves["logits"])
    s_logits = leaves["logits"].detach().requires_grad_()
    (want,) = torch.autograd.grad(full_divergence(name, t_logits, s_logits, 2.0), s_logits)
    assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-6)


def test_half_precision_cache_gives_fp32_loss():
    _, student, targets = make_batch(12, k=3)
    targets.topk_logprobs, targets.tail_logprob = targets.topk_logprobs.half(), targets.tail_logprob.half()
    loss = get_loss("fkl")(student, targets, MASK, temperature=2.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bad_hyperparameters_raise():
    _, student, targets = make_batch(13, k=3)
    with pytest.raises(KdbenchError, match="temperature must be > 0, got 0"):
        get_loss("fkl")(student, targets, MASK, temperature=0)
    with pytest.raises(KdbenchError, match="beta must lie strictly between 0 and 1, got 1"):
        get_loss("jsd")(student, targets, MASK, beta=1)


# --- data, hidden, attention and relation losses ----------------------------------------


def test_ce_equals_cross_entropy():
    leaves, student, targets = make_batch(14)
    counted = MASK[:, 1:] & MASK[:, :-1]
    expected = F.cross_entropy(leaves["logits"][:, :-1][counted], targets.input_ids[:, 1:][counted])
    assert torch.allclose(get_loss("ce")(student, targets, MASK), expected, atol=1e-6)


def test_ce_ignores_out_of_range_padding_ids():
    _, student, targets = make_batch(15)
    padded = targets.input_ids.clone()
    padded[~MASK] = -100
    same = Targets(input_ids=padded)
    assert torch.allclose(get_loss("ce")(student, same, MASK), get_loss("ce")(student, targets, MASK))


def test_hidden_losses_match_torch():
    leaves, student, targets = make_batch(16)
    s = leaves["hidden"].transpose(1, 2)[MASK]  # (N, L, D)
    t = targets.hidden.transpose(1, 2)[MASK]
    assert torch.allclose(get_loss("hidden_mse")(student, targets, MASK), F.mse_loss(s, t), atol=1e-6)
    cos = F.cosine_similarity(s, t, dim=-1)  # (N, L)
    assert torch.allclose(get_loss("hidden_cos")(student, targets, MASK), (1 - cos).mean(), atol=1e-6)
    full = torch.ones_like(MASK)  # the unmasked fast path
    assert torch.allclose(get_loss("hidden_mse")(student, targets, full), F.mse_loss(student.hidden, targets.hidden),
                          atol=1e-6)


def test_hidden_width_mismatch_asks_for_projector():
    _, student, targets = make_batch(17)
    student.hidden = student.hidden[..., :4]
    with pytest.raises(KdbenchError, match="HiddenProjector"):
        get_loss("hidden_mse")(student, targets, MASK)


def reference_attention_kl(s, t):
    """KL over the causal part of every row, heads averaged when counts differ; all positions counted."""
    if s.shape[2] != t.shape[2]:
        s, t = s.mean(2), t.mean(2)
    total, rows = 0.0, 0
    for index in itertools.product(*map(range, s.shape[:-2])):
        for i in range(T):
            p, q = t[index][i, : i + 1], s[index][i, : i + 1]
            total += (p * (p / q).log()).sum().item()
            rows += 1
    return total / rows


@pytest.mark.parametrize("student_heads", [H, 3])
def test_attention_kl_matches_reference(student_heads):
    gen = torch.Generator().manual_seed(18)
    s = causal_softmax(torch.randn(B, L, student_heads, T, T, generator=gen))
    t = causal_softmax(torch.randn(B, L, H, T, T, generator=gen))
    student = StudentOutputs(logits=torch.zeros(B, T, V), attentions=s)
    targets = Targets(input_ids=torch.zeros(B, T, dtype=torch.long), attentions=t)
    loss = get_loss("attn_kl")(student, targets, torch.ones(B, T, dtype=torch.bool))
    assert loss.item() == pytest.approx(reference_attention_kl(s, t), abs=1e-5)


def reference_relation_kl(s_qkv, t_qkv, heads):
    """Loop over (b, layer, q/k/v, relation head): causal softmax relations, KL row by row."""

    def relation(x):  # (T, D) -> list of (T, T) relation matrices
        d = x.shape[-1] // heads
        parts = [x[:, r * d : (r + 1) * d] for r in range(heads)]
        return [causal_softmax(part @ part.T / math.sqrt(d)) for part in parts]

    total, rows = 0.0, 0
    for index in itertools.product(*map(range, s_qkv.shape[:3])):
        for p, q in zip(relation(t_qkv[index]), relation(s_qkv[index])):
            for i in range(T):
                total += (p[i, : i + 1] * (p[i, : i + 1] / q[i, : i + 1]).log()).sum().item()
                rows += 1
    return total / rows


def test_relation_across_widths_matches_reference():
    gen = torch.Generator().manual_seed(19)
    s_qkv = torch.randn(B, L, 3, T, 8, generator=gen, requires_grad=True)  # student width 8
    t_qkv = torch.randn(B, L, 3, T, 12, generator=gen)  # teacher width 12
    student = StudentOutputs(logits=torch.zeros(B, T, V), qkv=s_qkv)
    targets = Targets(input_ids=torch.zeros(B, T, dtype=torch.long), qkv=t_qkv)
    loss = get_loss("relation")(student, targets, torch.ones(B, T, dtype=torch.bool), relation_heads=4)
    assert loss.item() == pytest.approx(reference_relation_kl(s_qkv.detach(), t_qkv, 4), abs=1e-5)
    loss.backward()
    assert torch.isfinite(s_qkv.grad).all() and s_qkv.grad.abs().sum() > 0
    with pytest.raises(KdbenchError, match="student q/k/v width 8 is not divisible by relation_heads=3"):
        get_loss("relation")(student, targets, MASK, relation_heads=3)


# --- registry and projector -------------------------------------------------------------


def test_unknown_loss_lists_known_names():
    with pytest.raises(KdbenchError) as err:
        get_loss("kl")
    assert f"unknown loss 'kl'; known losses: {', '.join(sorted(LOSSES))}" in str(err.value)
    assert "fkl" in str(err.value) and "relation" in str(err.value)


def test_register_rejects_duplicates_and_positional_hyperparameters():
    with pytest.raises(ValueError, match="'ce' is already registered"):
        register("ce")(lambda student, targets, mask: student.logits.sum())
    with pytest.raises(ValueError, match="expected fn"):
        register("test_positional")(lambda student, targets, mask, temperature=1.0: student.logits.sum())
    with pytest.raises(ValueError, match="reads \\['logit'\\]"):
        register("test_reads", reads=("logit",))(lambda student, targets, mask: student.logits.sum())
    assert "test_positional" not in table and "test_reads" not in table


def test_registry_read_from_source_matches_the_imported_losses():
    """The parse-time reading of the decorators and the imported functions describe the same losses."""
    import inspect

    assert set(LOSSES) == set(table)
    for name, spec in LOSSES.items():
        params = inspect.signature(table[name]).parameters.values()
        assert spec.hyper == tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY), name
        assert set(spec.reads) <= set(READS), name
    assert LOSSES["ce"].reads == () and LOSSES["hidden_mse"].reads == ("hidden",)
    assert LOGIT_LOSSES == ["fkl", "jsd", "rkl", "tvd"]


def test_loss_kwargs_keeps_only_accepted_keywords():
    hyper = {"temperature": 2, "beta": 0.5, "relation_heads": 4, "weight": 3.0}
    assert loss_kwargs("fkl", hyper) == {"temperature": 2}
    assert loss_kwargs("jsd", hyper) == {"temperature": 2, "beta": 0.5}
    assert loss_kwargs("relation", hyper) == {"relation_heads": 4}
    assert loss_kwargs("ce", hyper) == {}
    with pytest.raises(KdbenchError, match="unknown loss"):
        loss_kwargs("nope", hyper)


def test_hidden_projector():
    torch.manual_seed(20)
    layers = [torch.randn(B, T, 6) for _ in range(L)]
    torch.manual_seed(21)
    reference = [torch.nn.Linear(6, D) for _ in range(L)]  # the same draws, one nn.Linear per layer
    torch.manual_seed(21)
    proj = HiddenProjector(L, 6, D)
    out = proj(layers)
    assert out.shape == (B, L, T, D)
    for layer in range(L):  # one independent map per layer, initialised as nn.Linear
        assert torch.equal(proj.weight[layer], reference[layer].weight) and torch.equal(proj.bias[layer], reference[layer].bias)
        assert torch.allclose(out[:, layer], reference[layer](layers[layer]), atol=1e-6)
    assert not torch.allclose(proj.weight[0], proj.weight[1])
    same = HiddenProjector(L, D, D, kind="identity")
    assert list(same.parameters()) == [] and torch.equal(same(out.unbind(1)), out)
    with pytest.raises(KdbenchError, match="'identity' needs equal widths, got student 6 and teacher 8"):
        HiddenProjector(L, 6, D, kind="identity")
    with pytest.raises(KdbenchError, match="expects 2 tensors \\(B, T, 6\\)"):
        proj(layers + layers[:1])
    with pytest.raises(KdbenchError, match="expects 2 tensors \\(B, T, 6\\)"):
        proj([h[..., :5] for h in layers])
    with pytest.raises(KdbenchError, match="kind 'conv' is not allowed"):
        HiddenProjector(L, 6, D, kind="conv")


def test_logit_pass_without_cached_ids_names_what_is_missing():
    _, student, targets = make_batch(23, k=3)
    targets.topk_ids = None
    with pytest.raises(KdbenchError, match="top-k divergences need the teacher's top-k ids"):
        logit_pass(student.logits, targets, MASK, ce=True, buckets=True, temperature=2.0)
