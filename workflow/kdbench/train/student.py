"""Students: one saved initialisation per seed, then one training run per (arm, seed) from the cache
(or, for the budget curves, one run per (arm, seed) that branches a student at every budget).

Every arm of a seed loads the same saved initial weights and draws the same batches, so the
arms differ only in their loss.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from kdbench import KdbenchError
from kdbench.schema.arms import ArmConfig, Capture
from kdbench.cache.store import TeacherCache
from kdbench.cache.capture import Online, online_teacher
from kdbench.schema.checks import tokenizer_mismatch
from kdbench.schema.config import StudentConfig, TrainConfig, as_dict, build
from kdbench.data.tokens import load_tokens
from kdbench.train.flops import training_flops
from kdbench.io import atomic_dir, read_json, write_json
from kdbench.devices import device_for_rank, world
from kdbench.schema.layermap import layer_map
from kdbench.memory import keep_freed_memory
from kdbench.models.causal_lm import (blocks, build_model, check_attention_formula, check_embedding_rows, forward_taps,
                            load_model, load_tokenizer, save_model, vocabulary_sha256, width)
from kdbench.provenance import fingerprint
from kdbench.schema.registry import specs
from kdbench.train.loop import Objective, TokenSource, train, train_curve, write_curve



def init_student(cfg: StudentConfig, seed: int, tokenizer_dir: Path, seq_len: int, teacher_dir: Path | None,
                 out_dir: Path) -> None:
    """Save the initial weights of the seed's students (the untrained floor is evaluated too).

    A random student gets one embedding row per token of the tokenizer: training reads only those
    logits (`train.Objective`), so a row past them would stay untrained yet take probability mass in
    evaluation. 'teacher_layers' keeps the teacher's rows, padded or not, as it copies its embeddings.
    """
    tokenizer = load_tokenizer(tokenizer_dir)
    n = len(tokenizer)
    if cfg.init == "random":
        model = build_model(cfg.arch, n, seq_len, tokenizer.eos_token_id, seed)
    elif cfg.init == "teacher_layers":
        if teacher_dir is None:
            raise KdbenchError("student.init 'teacher_layers' needs the teacher")
        teacher = load_model(teacher_dir)
        check_embedding_rows(teacher, n, f"teacher {teacher_dir}")
        model = build_model(cfg.arch, teacher.config.vocab_size, seq_len, tokenizer.eos_token_id, seed)
        copy_teacher_layers(model, teacher)
    else:
        check_same_tokenizer(load_tokenizer(cfg.init, cfg.revision), tokenizer, f"student.init {cfg.init!r}",
                             f"the teacher's tokenizer {tokenizer_dir}")
        model = load_model(cfg.init, revision=cfg.revision)
        check_embedding_rows(model, n, f"student.init {cfg.init!r}")
    with atomic_dir(out_dir) as tmp:
        save_model(model, tokenizer_dir, tmp)


def check_same_tokenizer(student_tok, teacher_tok, student: str, teacher: str) -> None:
    """Distillation compares token distributions: both sides must share one vocabulary. `student` and
    `teacher` name where each tokenizer comes from."""
    if vocabulary_sha256(student_tok) != vocabulary_sha256(teacher_tok):
        raise KdbenchError(tokenizer_mismatch(student, student_tok.get_vocab(), teacher, teacher_tok.get_vocab(),
                                              (student_tok.special_tokens_map, teacher_tok.special_tokens_map)))


def copy_teacher_layers(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Initialise the student from the teacher: embeddings, head and uniformly chosen blocks."""
    if student.config.model_type != teacher.config.model_type or width(student) != width(teacher):
        raise KdbenchError("student.init 'teacher_layers' needs the teacher's architecture family and width "
                           f"(student {student.config.model_type}/{width(student)}, "
                           f"teacher {teacher.config.model_type}/{width(teacher)})")
    pairs = layer_map("uniform", len(blocks(student)), len(blocks(teacher)))
    t_state = teacher.state_dict()
    prefix = next(n for n, m in student.named_modules() if m is blocks(student)) + "."
    source = {s - 1: t - 1 for s, t in pairs}
    state = {}
    for key, value in student.state_dict().items():
        src = key
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            src = f"{prefix}{source[int(index)]}.{rest}"
        if src not in t_state or t_state[src].shape != value.shape:
            raise KdbenchError(f"student.init 'teacher_layers': teacher has no tensor {src!r} of shape {tuple(value.shape)}")
        state[key] = t_state[src].clone()
    student.load_state_dict(state)


def teacher_source(teacher: Path, arm: ArmConfig, init_dir: Path, model, data_dir: Path, online: Online | None,
                   teacher_sha256: str | None = None):
    """(batch source, manifest) of the teacher's targets: the cache at `teacher`, or, with `online`, the teacher
    model at `teacher` run in this job. Either must match the student's tokenizer (its vocabulary and size, not the
    student's embedding rows) and, when `teacher_sha256` is given, be that teacher's (a random-teacher control's
    cache is refused as the real one's)."""
    tokenizer = load_tokenizer(init_dir)
    expect = {"vocab_size": len(tokenizer), "vocabulary_sha256": vocabulary_sha256(tokenizer)}
    if teacher_sha256 is not None:
        expect["teacher_sha256"] = teacher_sha256
    if online is None:
        cache = TeacherCache(teacher, expect=expect)
        cache.select(arm.components)
        return cache, cache.manifest
    source, manifest = online_teacher(teacher, data_dir, online, arm, len(blocks(model)))
    for key, want in expect.items():
        if manifest[key] != want:
            raise KdbenchError(f"online teacher {teacher}: {key} {manifest[key]!r} differs from the student's {want!r}")
    return source, manifest


class _Fit:
    """What training one arm for one seed needs: the initial model, the teacher's targets, the objective."""

    def __init__(self, arm_name: str, arm: ArmConfig, cfg: TrainConfig, seed: int, init_dir: Path, teacher: Path,
                 data_dir: Path, online: Online | None, teacher_sha256: str | None, *job: object):
        self.arm_name, self.arm, self.cfg, self.seed, self.online = arm_name, arm, cfg, seed, online
        self.model = load_model(init_dir)
        self.source, self.manifest = teacher_source(teacher, arm, init_dir, self.model, data_dir, online, teacher_sha256)
        m = self.manifest
        self.pairs = arm.pairs(len(blocks(self.model)), m["teacher_layers"])
        self.objective = Objective(arm, self.pairs, Capture.from_settings(m["settings"]), self.model, m["teacher_width"],
                                   seed, vocab=m["vocab_size"])
        self.key = fingerprint(arm_name, as_dict(arm), as_dict(cfg), seed, m["tokens_sha256"], m["teacher_sha256"],
                               read_json(init_dir / "config.json"), *job)
        self.val = TokenSource(load_tokens(data_dir / "val.npy"))
        if "attentions" in self.objective.want:  # its maps are derived from q/k as the teacher's are: the formula must hold
            ids, layers = self.val.batch(np.arange(1)).input_ids, self.objective.want["attentions"]
            with torch.no_grad():
                check_attention_formula(self.model, ids, layers,
                                        forward_taps(self.model, ids, attentions=layers).maps(),
                                        f"student of arm {arm_name}")
        self.label = f"{arm_name}/seed{seed}"

    def summary(self, summary: dict) -> dict:
        flops = _flops(self.arm, self.pairs, self.objective, self.model, self.source, self.manifest, summary,
                       self.online is not None)
        return {**summary, "layer_pairs": self.pairs, "flops": flops}


def fit_student(arm_name: str, arm: ArmConfig, cfg: TrainConfig, seed: int, init_dir: Path, teacher: Path,
                data_dir: Path, work_dir: Path, online: Online | None = None,
                teacher_sha256: str | None = None) -> tuple[torch.nn.Module, list[dict], dict]:
    """Train one arm for one seed from the teacher cache at `teacher` (or, with `online`, the teacher model there);
    returns (model, curve, summary). `teacher_sha256`: see `teacher_source`."""
    fit = _Fit(arm_name, arm, cfg, seed, init_dir, teacher, data_dir, online, teacher_sha256)
    curve, summary = train(fit.model, fit.objective, fit.source, cfg, seed, work_dir / "checkpoint.pt", fit.key,
                           val=fit.val, device=device_for_rank(), label=fit.label)
    (work_dir / "checkpoint.pt").unlink(missing_ok=True)
    return fit.model, curve, fit.summary(summary)


def fit_curve(arm_name: str, arm: ArmConfig, cfg: TrainConfig, seed: int, init_dir: Path, teacher: Path,
              data_dir: Path, outs: Mapping[int, Path], decay: float, work_dir: Path, online: Online | None = None,
              teacher_sha256: str | None = None) -> None:
    """Train one arm for one seed once, to the largest budget of `outs`, branching a decay at every budget
    (`loop.train_curve`); each branch end is saved as a student into `outs[budget]`, with the train.json a
    separate run of that budget would have (its `config.tokens` is the budget) plus the branch's steps."""
    fit = _Fit(arm_name, arm, cfg, seed, init_dir, teacher, data_dir, online, teacher_sha256, sorted(outs), decay)
    keep = work_dir / "branches"  # finished branches, kept across a resume (Snakemake removes a failed job's outputs)

    def save(budget: int, curve: list[dict], summary: dict) -> None:
        if world()[0] == 0:
            _save_student(fit.model, init_dir, keep / f"b{budget}", curve, {
                **fit.summary(summary), "arm": arm_name, "seed": seed,
                "config": as_dict(replace(cfg, tokens=budget)), "arm_config": as_dict(arm), "decay": decay})

    train_curve(fit.model, fit.objective, fit.source, cfg, seed, list(outs), decay, save, work_dir / "checkpoint.pt",
                fit.key, val=fit.val, device=device_for_rank(), label=fit.label)
    if world()[0] == 0:
        for budget, out in outs.items():
            with atomic_dir(Path(out)) as tmp:
                shutil.copytree(keep / f"b{budget}", tmp, dirs_exist_ok=True)
        shutil.rmtree(keep)
    (work_dir / "checkpoint.pt").unlink(missing_ok=True)


def _save_student(model: torch.nn.Module, init_dir: Path, out_dir: Path, curve: list[dict], record: dict) -> None:
    with atomic_dir(out_dir) as tmp:
        save_model(model.cpu(), init_dir, tmp)
        write_curve(curve, tmp / "curve.csv")
        write_json(tmp / "train.json", record)
    model.to(device_for_rank())


def _flops(arm: ArmConfig, pairs, objective: Objective, model, source, m: dict, summary: dict, online: bool) -> dict:
    """This job's training FLOPs by component (`kdbench.train.flops`): the teacher's forward counted once per
    cached token, or, online, once per token the student trains on."""
    reads: dict[str, int] = {}
    for term in arm.terms:
        for part in specs()[term].reads:
            reads[part] = reads.get(part, 0) + (1 if part == "logits" else len(pairs))
    rows = m.get("teacher_embedding_rows", m["vocab_size"])  # absent (older caches, direct writes): vocab_size is it
    teacher = {"layers": m["teacher_layers"], "width": m["teacher_width"], "vocab_size": rows,
               "heads": m.get("teacher_heads", 1)} if arm.uses_teacher else None
    projector = sum(p.numel() for p in objective.parameters())
    return training_flops(sum(p.numel() for p in model.parameters()), projector, summary["tokens"], reads,
                          m["vocab_size"], source.seq_len, width(model), teacher,
                          summary["tokens"] if online else min(summary["tokens"], source.n_seqs * source.seq_len))


def train_student(arm_name: str, arm: ArmConfig, cfg: TrainConfig, seed: int, init_dir: Path, teacher: Path,
                  data_dir: Path, out_dir: Path, work_dir: Path, online: Online | None = None,
                  teacher_sha256: str | None = None) -> None:
    """Train one arm for one seed from the teacher cache (or online) and save the student."""
    model, curve, summary = fit_student(arm_name, arm, cfg, seed, init_dir, teacher, data_dir, work_dir, online,
                                        teacher_sha256)
    if world()[0] == 0:
        _save_student(model, init_dir, out_dir, curve, {**summary, "arm": arm_name, "seed": seed,
                                                        "config": as_dict(cfg), "arm_config": as_dict(arm)})


def train_student_distributed(processes: int, arm_name: str, arm: ArmConfig, cfg: TrainConfig, seed: int,
                              init_dir: Path, teacher: Path, data_dir: Path, out_dir: Path, work_dir: Path,
                              online: Online | None = None, teacher_sha256: str | None = None,
                              branches: Mapping[int, Path] | None = None, decay: float = 0.0) -> None:
    """Run `train_student` (with `branches`, budget -> output folder: `fit_curve`) under torchrun with `processes`
    processes (DDP; nccl on GPUs, gloo on CPU)."""
    if processes <= 1:
        if branches:
            return fit_curve(arm_name, arm, cfg, seed, init_dir, teacher, data_dir, branches, decay, work_dir, online,
                             teacher_sha256)
        return train_student(arm_name, arm, cfg, seed, init_dir, teacher, data_dir, out_dir, work_dir, online,
                             teacher_sha256)
    job = Path(work_dir) / "job.json"
    write_json(job, {"arm_name": arm_name, "arm": as_dict(arm), "train": as_dict(cfg), "seed": seed,
                     "online": as_dict(online) if online else None, "teacher_sha256": teacher_sha256,
                     "paths": [str(p) for p in (init_dir, teacher, data_dir, out_dir, work_dir)],
                     "branches": {str(b): str(p) for b, p in (branches or {}).items()}, "decay": decay})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "kdbench.train.student", str(job)]
    done = subprocess.run(cmd, stdout=sys.stdout, stderr=sys.stderr)
    if done.returncode:
        raise KdbenchError(f"distributed training of {arm_name}/seed{seed} failed (torchrun exit {done.returncode})")


def main(argv: list[str] | None = None) -> None:
    """torchrun entry point: `python -m kdbench.train.student JOB.json`."""
    keep_freed_memory()  # as run_job does for single-process jobs
    job = read_json(Path((argv or sys.argv[1:])[0]))
    arm = build(ArmConfig, job["arm"], f"arms.{job['arm_name']}")
    online = build(Online, job["online"], "online") if job["online"] else None
    train_student_distributed(1, job["arm_name"], arm, build(TrainConfig, job["train"], "student.train"), job["seed"],
                              *map(Path, job["paths"]), online=online, teacher_sha256=job.get("teacher_sha256"),
                              branches={int(b): Path(p) for b, p in job.get("branches", {}).items()},
                              decay=job.get("decay", 0.0))


if __name__ == "__main__":
    main()
