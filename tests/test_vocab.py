"""The distillation vocabulary is the tokenizer's ids, whatever rows the models' embedding matrices have.

Families pad the matrix past the tokenizer (Pythia: 50,304 rows for 50,277 tokens). Stand-ins here: a
teacher padded by 13 rows and a pretrained student padded by 5, both with the padded output rows made
loud (scaled copies of real rows), so any padded logit that leaked into the targets or the loss would
dominate it. Each is compared with its twin whose padded rows are sliced off the state dict.

    .venv/bin/python -m pytest tests/test_vocab.py -q   (CPU, offline, about 10 s)
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench import KdbenchError
from kdbench.cache import capture
from kdbench.schema.arms import ArmConfig
from kdbench.cache.store import TeacherCache
from kdbench.cache.capture import Online, cache_teacher, load_teacher, online_teacher
from kdbench.schema.config import ArchConfig, CacheConfig, StudentConfig, TokenizerConfig, TrainConfig
from kdbench.models.causal_lm import build_model, load_model, load_tokenizer, save_model
from kdbench.train.student import init_student, train_student
from kdbench.data.tokenizer import train_tokenizer

T, N = 16, 16
TEACHER = ArchConfig(family="gpt_neox", n_layer=2, d_model=32, n_head=4)
STUDENT = ArchConfig(family="llama", n_layer=2, d_model=16, n_head=2)
ARM = ArmConfig(terms={"ce": 0.5, "fkl": 0.5}, temperature=2.0)
CACHE = CacheConfig(top_k=8, shard_seqs=8)
TRAIN = TrainConfig(tokens=2 * 4 * T, batch_size=4, warmup_steps=1, log_every_s=0.0, curve_every=1, val_seqs=4,
                    autocast=False)


def padded_pair(tok_dir: Path, arch: ArchConfig, extra: int, seed: int, out: Path) -> tuple[Path, Path]:
    """(a model with `extra` loud rows past the tokenizer, the same model without them), saved with the tokenizer."""
    tok = load_tokenizer(tok_dir)
    n = len(tok)
    model = build_model(arch, n + extra, T, tok.eos_token_id, seed)
    with torch.no_grad():
        model.get_output_embeddings().weight[n:] = 30 * model.get_output_embeddings().weight[:extra]
    state = {k: v[:n] if v.shape[:1] == (n + extra,) else v for k, v in model.state_dict().items()}
    twin = build_model(arch, n, T, tok.eos_token_id, seed)
    twin.load_state_dict(state)
    save_model(model, tok_dir, out / "padded")
    save_model(twin, tok_dir, out / "trimmed")
    return out / "padded", out / "trimmed"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_dir) -> dict:
    root = tmp_path_factory.mktemp("vocab")
    n = len(load_tokenizer(tiny_tokenizer_dir))
    tokens = np.random.default_rng(0).integers(0, n, size=(N, T)).astype(np.uint16)
    (root / "data").mkdir()
    np.save(root / "data" / "train.npy", tokens)
    np.save(root / "data" / "val.npy", tokens[:4])
    teacher, teacher_twin = padded_pair(tiny_tokenizer_dir, TEACHER, 13, 1, root / "teacher")
    student, student_twin = padded_pair(tiny_tokenizer_dir, STUDENT, 5, 2, root / "student")
    for name, model_dir in (("cache", teacher), ("cache-twin", teacher_twin)):
        cache_teacher(model_dir, root / "data", CACHE, {"logit": ARM}, 2, N * T, root / name, root / "work" / name)
    return {"root": root, "n": n, "tokens": tokens, "tok": tiny_tokenizer_dir, "teacher": teacher,
            "student": student, "student_twin": student_twin}


def test_the_stand_ins_padded_rows_would_win_the_top_k(setup):
    """Without the cut, the teacher's top-1 would be a padded id almost everywhere: the tests below can fail."""
    logits = load_model(setup["teacher"])(input_ids=torch.from_numpy(setup["tokens"].astype(np.int64))).logits
    assert logits.shape[-1] == setup["n"] + 13
    assert (logits.argmax(-1) >= setup["n"]).float().mean() > 0.9


def test_cached_and_online_targets_are_over_the_tokenizer(setup):
    root, n = setup["root"], setup["n"]
    cache, twin = TeacherCache(root / "cache"), TeacherCache(root / "cache-twin")
    assert (cache.manifest["vocab_size"], cache.manifest["teacher_embedding_rows"]) == (n, n + 13)
    assert (twin.manifest["vocab_size"], twin.manifest["teacher_embedding_rows"]) == (n, n)
    idx = np.arange(N)
    padded, unpadded = cache.batch(idx), twin.batch(idx)
    assert int(padded.topk_ids.max()) < n
    for name in ("topk_ids", "topk_logprobs", "tail_logprob"):  # the padded teacher's targets are its twin's
        assert torch.equal(getattr(padded, name), getattr(unpadded, name)), name
    assert torch.isfinite(padded.tail_logprob).all()
    source, manifest = online_teacher(setup["teacher"], root / "data", Online(CACHE, N * T), ARM, 2)
    assert (manifest["vocab_size"], manifest["teacher_embedding_rows"], manifest["top_k"]) == (n, n + 13, 8)
    live = source.batch(idx)
    for name in ("topk_ids", "topk_logprobs", "tail_logprob"):
        assert torch.equal(getattr(live, name), getattr(padded, name)), name


def _curve(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path / "curve.csv")))


def test_padded_student_trains_as_its_unpadded_twin(setup):
    """A pretrained student padded by 5 rows: its logits are cut to the tokenizer before CE and the divergence,
    so its losses are its twin's (whose logits are exactly the cut ones)."""
    root = setup["root"]
    out = {}
    for name in ("student", "student_twin"):
        init = root / "init" / name
        init_student(StudentConfig(arch=STUDENT, init=str(setup[name])), 0, setup["tok"], T, setup["teacher"], init)
        train_student("logit", ARM, TRAIN, 0, init, root / "cache", root / "data", root / "out" / name,
                      root / "work" / name)
        out[name] = root / "out" / name
    assert load_model(out["student"]).config.vocab_size == setup["n"] + 5  # the student keeps its rows
    padded, twin = _curve(out["student"]), _curve(out["student_twin"])
    assert len(padded) == len(twin) == 2
    for row, other in zip(padded, twin):
        for key in ("loss", "loss_ce", "loss_fkl"):
            assert math.isfinite(float(row[key]))
            assert float(row[key]) == pytest.approx(float(other[key]), rel=1e-5, abs=1e-6), key
    val = [json.loads((out[s] / "train.json").read_text())["val_loss"] for s in out]
    assert val[0] == pytest.approx(val[1], rel=1e-5)


def test_fewer_rows_than_tokens_are_refused_naming_model_and_both(setup, tmp_path):
    n, tok = setup["n"], load_tokenizer(setup["tok"])
    save_model(build_model(STUDENT, n - 3, T, tok.eos_token_id, 0), setup["tok"], tmp_path / "short")
    with pytest.raises(KdbenchError, match=rf"^student.init '.*short' has {n - 3} embedding rows, fewer than the "
                                           rf"{n} tokens of its tokenizer$"):
        init_student(StudentConfig(arch=STUDENT, init=str(tmp_path / "short")), 0, setup["tok"], T, None,
                     tmp_path / "init")
    with pytest.raises(KdbenchError, match=rf"^teacher .*short has {n - 3} embedding rows, fewer than the {n} "):
        cache_teacher(tmp_path / "short", setup["root"] / "data", CACHE, {"logit": ARM}, 2, N * T, tmp_path / "c",
                      tmp_path / "w")


def test_student_with_another_tokenizer_is_refused_naming_both(setup, tmp_path):
    other_tok = tmp_path / "other-tokenizer"
    train_tokenizer([f"zz{i} qq{i} ww" for i in range(100)], TokenizerConfig(vocab_size=300, min_frequency=1),
                    other_tok)
    save_model(build_model(STUDENT, len(load_tokenizer(other_tok)), T, 0, 0), other_tok, tmp_path / "other")
    ids = load_tokenizer(other_tok).get_vocab(), load_tokenizer(setup["tok"]).get_vocab()
    only = [sorted(a.keys() - b.keys(), key=a.get) for a, b in (ids, ids[::-1])]
    with pytest.raises(KdbenchError) as refused:
        init_student(StudentConfig(arch=STUDENT, init=str(tmp_path / "other")), 0, setup["tok"], T, None,
                     tmp_path / "init")
    message = str(refused.value)
    assert message == (f"tokenizer mismatch: student.init '{tmp_path / 'other'}' ({len(ids[0])} tokens) and the "
                       f"teacher's tokenizer {setup['tok']} ({len(ids[1])} tokens) differ: {len(only[0])} tokens only "
                       f"in the student's (first {only[0][0]!r}), {len(only[1])} only in the teacher's (first "
                       f"{only[1][0]!r}); logit distillation needs one shared tokenizer")
    assert only[0] and only[1] and not (tmp_path / "init").exists()


def test_teacher_goes_to_the_process_device_unless_one_process_sees_several_gpus(setup, monkeypatch):
    """The spread itself needs GPUs; here: the decision, and the single-device path a CPU job takes."""
    teacher, device, identity = load_teacher(setup["teacher"], setup["tokens"])
    assert (device, teacher.config.vocab_size, identity["teacher_embedding_rows"]) == ("cpu", setup["n"], setup["n"] + 13)
    maps = []
    real = capture.load_model
    monkeypatch.setattr(capture, "load_model", lambda path, device_map=None: maps.append(device_map) or real(path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(capture, "world", lambda: (0, 1))
    assert load_teacher(setup["teacher"], setup["tokens"])[1] == "cpu"  # where the (here: CPU) embedding is
    monkeypatch.setattr(capture, "world", lambda: (0, 2))  # under torchrun each rank keeps its own copy
    load_teacher(setup["teacher"], setup["tokens"])
    assert maps == ["auto", None]
