"""The teacher: trained inside the DAG on the corpus, or imported from the hub or a local directory."""

from __future__ import annotations

from pathlib import Path

from kdbench.schema.arms import ArmConfig, Capture
from kdbench.schema.config import TeacherConfig, as_dict
from kdbench.data.tokens import load_tokens
from kdbench.io import atomic_dir, read_json, write_json
from kdbench.devices import device_for_rank
from kdbench.models.causal_lm import build_model, load_model, load_tokenizer, save_model, width
from kdbench.train.loop import Objective, TokenSource, train, write_curve
from kdbench.provenance import fingerprint



def train_teacher(cfg: TeacherConfig, data_dir: Path, tokenizer_dir: Path, out_dir: Path, work_dir: Path) -> None:
    """Train a causal LM with cross-entropy on the packed corpus and save it with `save_pretrained`."""
    tokens, val = load_tokens(data_dir / "train.npy"), load_tokens(data_dir / "val.npy")
    tokenizer = load_tokenizer(tokenizer_dir)
    model = build_model(cfg.arch, len(tokenizer), tokens.shape[1], tokenizer.eos_token_id, cfg.seed)
    objective = Objective(ArmConfig(terms={"ce": 1.0}), (), Capture(), model, width(model), cfg.seed)
    key = fingerprint(as_dict(cfg), read_json(data_dir / "data.json"))
    curve, summary = train(model, objective, TokenSource(tokens), cfg.train, cfg.seed, work_dir / "checkpoint.pt",
                           key, val=TokenSource(val), device=device_for_rank(), label="teacher")
    with atomic_dir(out_dir) as tmp:
        save_model(model.cpu(), tokenizer_dir, tmp)
        write_curve(curve, tmp / "curve.csv")
        write_json(tmp / "train.json", {**summary, "config": as_dict(cfg)})
    (work_dir / "checkpoint.pt").unlink(missing_ok=True)


def import_teacher(source: str, out_dir: Path, revision: str | None = None) -> None:
    """Copy a pretrained causal LM (hub id or directory, at `revision`) into the results tree, so it is hashed
    like any model."""
    model = load_model(source, revision=revision)
    with atomic_dir(out_dir) as tmp:
        save_model(model, source, tmp, revision)


def import_tokenizer(source: str, out_dir: Path, revision: str | None = None) -> None:
    """Save the tokenizer of a pretrained teacher (at `revision`); the corpus is tokenised with it."""
    tokenizer = load_tokenizer(source, revision)
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)


def random_teacher(teacher_dir: Path, seed: int, out_dir: Path) -> None:
    """An untrained model of the teacher's architecture (its config, fresh weights from `seed`), saved like the teacher.

    The random-teacher controls distil from it: what a student gains from it is the regularising
    effect of the loss terms, not knowledge (Mason-Williams et al.).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(teacher_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(out_dir) as tmp:
        save_model(model, teacher_dir, tmp)
