"""kdbench.train.loop / student: fair initialisation, resume after SIGKILL, NaN detection, tokenizer checks.

    .venv/bin/python -m pytest tests/test_train.py -v
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import KdbenchError
from kdbench.schema.arms import ArmConfig, Capture
from kdbench.schema.config import ArchConfig, CacheConfig, StudentConfig, TrainConfig
from kdbench.cache.capture import write_teacher_cache
from kdbench.data.tokens import batch_indices
from kdbench.models.causal_lm import build_model, load_model, load_tokenizer, vocabulary_sha256, width
from kdbench.train.student import check_same_tokenizer, init_student, train_student
from kdbench.train.loop import CHECKPOINT_FORMAT, Objective, TokenSource, lr_at, train

T = 16
SMALL = TrainConfig(tokens=8 * 4 * T, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=3,
                    log_every_s=0.0, curve_every=1, val_seqs=4, autocast=False)


def test_init_is_identical_for_a_seed_and_differs_across_seeds(tmp_path, tiny_tokenizer_dir):
    cfg = StudentConfig(arch=ArchConfig(n_layer=2, d_model=16, n_head=2))
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        init_student(cfg, seed, tiny_tokenizer_dir, T, None, tmp_path / name)
    a, b, c = (load_model(tmp_path / n).state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_batches_are_a_pure_function_of_seed_and_step():
    first = [batch_indices(10, 4, s, seed=3) for s in range(5)]
    again = [batch_indices(10, 4, s, seed=3) for s in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    epoch = np.concatenate(first)[:10]
    assert sorted(epoch) == list(range(10))  # every sequence once per epoch
    assert not np.array_equal(np.concatenate(first), np.concatenate([batch_indices(10, 4, s, 4) for s in range(5)]))


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.25) and lr_at(3, 100, cfg) == pytest.approx(1.0)
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, 100, cfg) >= lr_at(s + 1, 100, cfg) for s in range(4, 99))


@pytest.fixture
def student_setup(tmp_path, tiny_tokenizer_dir):
    """An init dir, a teacher cache with hidden states, and validation tokens."""
    tok = load_tokenizer(tiny_tokenizer_dir)
    vocab = len(tok)
    init_student(StudentConfig(arch=ArchConfig(n_layer=2, d_model=16, n_head=2)), 0, tiny_tokenizer_dir, T, None,
                 tmp_path / "init")
    tokens = np.random.default_rng(0).integers(0, vocab, size=(24, T)).astype(np.uint16)
    teacher = build_model(ArchConfig(n_layer=4, d_model=24, n_head=2), vocab, T, tok.eos_token_id, seed=5)
    identity = {"teacher_sha256": "t", "vocabulary_sha256": vocabulary_sha256(tok), "tokens_sha256": "d",
                "teacher_layers": 4, "teacher_width": 24}
    write_teacher_cache(teacher, tokens, identity, CacheConfig(top_k=8, shard_seqs=8),
                Capture(hidden=(2, 4)), tmp_path / "cache", tmp_path / "cache-work")
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "val.npy", tokens[:4])
    return tmp_path


def _train(root: Path, out: str, cfg: TrainConfig = SMALL):
    arm = ArmConfig(terms={"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0}, temperature=2.0)
    train_student("logit_hidden", arm, cfg, 0, root / "init", root / "cache", root / "data", root / out, root / f"work-{out}")
    return load_model(root / out).state_dict()


def test_student_trains_from_cache_and_writes_outputs(student_setup):
    state = _train(student_setup, "s")
    out = student_setup / "s"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    curve = (out / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,tokens,lr,loss,tokens_per_s") and "loss_hidden_mse" in curve[0]
    assert len(curve) == 1 + 8
    init = load_model(student_setup / "init").state_dict()
    assert not all(torch.equal(state[k], init[k]) for k in state)


RESUME = """
import os, signal, sys
from pathlib import Path
import kdbench.train.loop as tr
from kdbench.schema.arms import ArmConfig
from kdbench.schema.config import TrainConfig
from kdbench.train.student import train_student
root, die_at = Path(sys.argv[1]), int(sys.argv[2])
cfg = TrainConfig(tokens={tokens}, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=3, log_every_s=0.0,
           curve_every=1, val_seqs=4, autocast=False)
original = tr.torch.nn.utils.clip_grad_norm_
calls = [0]
def clip(params, norm):
    calls[0] += 1
    if calls[0] == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(params, norm)
tr.torch.nn.utils.clip_grad_norm_ = clip
arm = ArmConfig(terms={{"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0}}, temperature=2.0)
train_student("logit_hidden", arm, cfg, 0, root / "init", root / "cache", root / "data", root / "k", root / "work-k")
"""


def test_sigkill_resumes_from_checkpoint_to_identical_weights(student_setup):
    reference = _train(student_setup, "r")
    script = student_setup / "resume.py"
    script.write_text(RESUME.format(tokens=SMALL.tokens))
    killed = subprocess.run([sys.executable, str(script), str(student_setup), "5"], capture_output=True, text=True)
    assert killed.returncode == -9 and not (student_setup / "k").exists()
    assert (student_setup / "work-k" / "checkpoint.pt").exists()  # step 3 survived
    done = subprocess.run([sys.executable, str(script), str(student_setup), "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resumed from checkpoint at step 3" in done.stdout
    resumed = load_model(student_setup / "k").state_dict()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_nan_loss_stops_with_step_and_term(student_setup):
    model = load_model(student_setup / "init")
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    objective = Objective(ArmConfig(terms={"ce": 1.0}), (), Capture(), model, width(model), 0)
    source = TokenSource(np.load(student_setup / "data" / "val.npy"))
    with pytest.raises(KdbenchError, match=r"non-finite loss at step 0: term 'ce'"):
        train(model, objective, source, SMALL, 0, student_setup / "ck.pt", "x")


@pytest.mark.parametrize("change", ["fingerprint", "format", "truncated"])
def test_checkpoint_of_another_job_or_format_is_ignored(student_setup, capsys, change):
    """Such a checkpoint is reported and left unused (a truncated one set aside): training starts at step 0 and
    ends as a fresh run."""
    source = TokenSource(np.load(student_setup / "data" / "val.npy"))

    def run(ckpt: Path) -> dict:
        model = load_model(student_setup / "init")
        objective = Objective(ArmConfig(terms={"ce": 1.0}), (), Capture(), model, width(model), 0)
        train(model, objective, source, SMALL, 0, ckpt, "job")
        return model.state_dict()

    fresh = run(student_setup / "none.pt")
    model = load_model(student_setup / "init")
    objective = Objective(ArmConfig(terms={"ce": 1.0}), (), Capture(), model, width(model), 0)
    state = {"model": model.state_dict(), "objective": objective.state_dict(), "optimizer": {}, "step": 5,
             "curve": [], "elapsed": 0.0, "fingerprint": "job", "format": CHECKPOINT_FORMAT, change: "other"}
    old = student_setup / f"old-{change}.pt"
    torch.save(state, old)
    if change == "truncated":
        old.write_bytes(old.read_bytes()[: old.stat().st_size // 2])
    capsys.readouterr()
    again = run(old)
    said = capsys.readouterr().out
    if change == "truncated":
        assert f"checkpoint {old} is unreadable (" in said and f"set aside as {old.name}.corrupt, starting at step 0" in said
        assert old.with_name(f"{old.name}.corrupt").exists()
    else:
        assert f"ignoring {old.name}, written for another job or format; starting at step 0" in said
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)


def test_cache_with_another_tokenizer_is_refused(student_setup, tmp_path_factory):
    from kdbench.schema.config import TokenizerConfig
    from kdbench.data.tokenizer import train_tokenizer

    other = tmp_path_factory.mktemp("other") / "tok"
    train_tokenizer([f"zz{i} qq{i} ww" for i in range(100)], TokenizerConfig(vocab_size=300, min_frequency=1), other)
    with pytest.raises(KdbenchError, match="tokenizer mismatch"):
        check_same_tokenizer(load_tokenizer(other), load_tokenizer(student_setup / "init"), "student", "teacher")
    init = student_setup / "init"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (init / f).write_bytes((other / f).read_bytes())
    with pytest.raises(KdbenchError, match="stale: (vocab_size|vocabulary_sha256)"):
        _train(student_setup, "bad")


def test_two_process_ddp_matches_single_process_curve(student_setup):
    """torchrun with 2 gloo processes (each half of every batch) follows the 1-process loss curve."""
    import csv

    from kdbench.train.student import train_student_distributed

    _train(student_setup, "single")
    arm = ArmConfig(terms={"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0}, temperature=2.0)
    root = student_setup
    train_student_distributed(2, "logit_hidden", arm, SMALL, 0, root / "init", root / "cache", root / "data",
                              root / "ddp", root / "work-ddp")
    curve = lambda name: [float(r["loss"]) for r in csv.DictReader(open(root / name / "curve.csv"))]
    single, ddp = curve("single"), curve("ddp")
    assert len(single) == len(ddp) == 8
    assert np.allclose(single, ddp, rtol=1e-3), (single, ddp)
    assert '"processes": 2' in (root / "ddp" / "train.json").read_text()


@pytest.mark.parametrize("terms,capture", [
    ({"ce": 0.5, "fkl": 0.5, "hidden_mse": 1.0, "attn_kl": 1.0}, Capture(hidden=(2, 4), attentions=(2, 4))),
    ({"ce": 0.5, "fkl": 0.5, "relation": 1.0}, Capture(qkv=(4,))),
])
def test_attention_and_relation_arms_train(tmp_path, tiny_tokenizer_dir, terms, capture):
    """Arms that need attention maps or q/k/v get them from the student and the cache."""
    tok = load_tokenizer(tiny_tokenizer_dir)
    init_student(StudentConfig(arch=ArchConfig(n_layer=2, d_model=16, n_head=2)), 0, tiny_tokenizer_dir, T, None,
                 tmp_path / "init")
    tokens = np.random.default_rng(0).integers(0, len(tok), size=(16, T)).astype(np.uint16)
    teacher = build_model(ArchConfig(n_layer=4, d_model=24, n_head=4), len(tok), T, tok.eos_token_id, seed=5)
    identity = {"teacher_sha256": "t", "vocabulary_sha256": vocabulary_sha256(tok), "tokens_sha256": "d",
                "teacher_layers": 4, "teacher_width": 24}
    write_teacher_cache(teacher, tokens, identity, CacheConfig(top_k=8), capture, tmp_path / "cache", tmp_path / "cw")
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "val.npy", tokens[:4])
    layer_map = "uniform" if "attn_kl" in terms else "last"
    arm = ArmConfig(terms=terms, temperature=2.0, layer_map=layer_map)
    cfg = TrainConfig(tokens=3 * 4 * T, batch_size=4, warmup_steps=1, log_every_s=0.0, val_seqs=4, autocast=False)
    train_student("arm", arm, cfg, 0, tmp_path / "init", tmp_path / "cache", tmp_path / "data", tmp_path / "out",
                  tmp_path / "work")
    header = (tmp_path / "out" / "curve.csv").read_text().splitlines()[0]
    assert all(f"loss_{t}" in header for t in terms)
