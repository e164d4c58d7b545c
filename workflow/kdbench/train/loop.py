"""The training loop shared by the teacher and every student arm.

Batches are a pure function of (seed, step) (`data.batch_indices`), the model starts from a
saved initialisation, and checkpoints hold model, projector and optimizer state, so an
interrupted job resumes at its last checkpoint and reaches the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdbench import KdbenchError
from kdbench.schema.arms import ArmConfig, Capture
from kdbench.schema.config import TrainConfig
from kdbench.data.tokens import batch_indices
from kdbench.devices import bf16_autocast, world
from kdbench.io import atomic_path
from kdbench.losses import HiddenProjector, StudentOutputs, Targets, get_loss, logit_pass, loss_kwargs
from kdbench.models.causal_lm import forward_taps, width


CHECKPOINT_FORMAT = 2  # 2: the hidden projector as one (L, D_t, D_s) weight and one (L, D_t) bias


class BatchSource(Protocol):
    n_seqs: int
    seq_len: int

    def batch(self, idx: np.ndarray, device: str = "cpu") -> Targets: ...


class TokenSource:
    """Plain token sequences (no teacher): the data for CE training and validation."""

    def __init__(self, tokens: np.ndarray):
        self.tokens = tokens
        self.n_seqs, self.seq_len = tokens.shape

    def batch(self, idx: np.ndarray, device: str = "cpu") -> Targets:
        return Targets(input_ids=torch.from_numpy(self.tokens[idx].astype(np.int64)).to(device))


class Objective(nn.Module):
    """Weighted sum of an arm's loss terms; owns the learned hidden-state projection.

    `vocab`: the distillation vocabulary, the tokenizer's ids (None: every row of the student's head). The
    student's logits are cut to it before every term, CE included, so rows padded past the tokenizer take no
    mass and the teacher's uniform tail spreads over V - k tokens that exist.
    """

    def __init__(self, arm: ArmConfig, pairs: tuple[tuple[int, int], ...], capture: Capture,
                 student: nn.Module, d_teacher: int, seed: int, vocab: int | None = None):
        super().__init__()
        self.arm, self.terms, self.vocab = arm, dict(arm.terms), vocab
        self.losses = {n: (get_loss(n), loss_kwargs(n, arm.hyper)) for n in self.terms}
        ce, buckets = "ce" in self.terms, "logits" in arm.reads  # one pass over the logits serves both
        self.logit_parts = dict(ce=ce, buckets=buckets, temperature=arm.temperature if buckets else 1.0)
        student_layers, wanted = tuple(s for s, _ in pairs), [t for _, t in pairs]
        self.want: dict[str, tuple[int, ...]] = {}  # component -> student layers to tap
        self.rows: dict[str, Tensor | None] = {}  # component -> rows of the cached layers, None for all in order
        for name in arm.layer_components:
            cached = getattr(capture, name)
            missing = [t for t in wanted if t not in cached]
            if missing:
                raise KdbenchError(f"teacher layers {missing} are not in the cache's {name} (it holds {list(cached)})")
            rows = [cached.index(t) for t in wanted]
            self.want[name] = student_layers
            self.rows[name] = None if rows == list(range(len(cached))) else torch.tensor(rows, dtype=torch.long)
        self.projector = None
        if "hidden" in self.want:
            with torch.random.fork_rng(devices=[]):  # never disturbs the student's own initialisation
                torch.manual_seed(seed)
                self.projector = HiddenProjector(len(pairs), width(student), d_teacher, arm.projection)

    def forward(self, model: nn.Module, targets: Targets, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        taps = forward_taps(model, targets.input_ids, **self.want)
        picked = _pick_layers(targets, self.rows)
        parts, logits = self.logit_parts, taps.logits[..., :self.vocab]
        student = StudentOutputs(
            logits=logits,
            hidden=self.projector(taps.hidden) if self.projector is not None else None,
            attentions=taps.maps(), qkv=taps.vectors(),
            logit_pass=logit_pass(logits, picked, mask, **parts) if parts["ce"] or parts["buckets"] else None)
        values = {n: fn(student, picked, mask, **kwargs) for n, (fn, kwargs) in self.losses.items()}
        total = sum(w * values[n] for n, w in self.terms.items())
        return total, values


def _pick_layers(t: Targets, rows: dict[str, Tensor | None]) -> Targets:
    """Select the arm's teacher layers from the cache's union of layers (no copy when it reads them all)."""
    def pick(name: str) -> Tensor | None:
        x, r = getattr(t, name), rows.get(name)
        return x if x is None or r is None else x.index_select(1, r.to(x.device))
    return replace(t, hidden=pick("hidden"), attentions=pick("attentions"), qkv=pick("qkv"))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def wsd_lr(step: int, decay_start: int, end: int, cfg: TrainConfig) -> float:
    """Warmup-stable-decay: the warm-up, the peak rate, then from `decay_start` to `end` a 1 - sqrt decay to
    lr x min_lr_ratio at the last step (the cooldown of Hägele et al. 2024, arXiv 2405.18392)."""
    rate = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    if step < decay_start:
        return rate
    progress = (step + 1 - decay_start) / max(1, end - decay_start)
    return rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - math.sqrt(progress)))


def branch_plan(budgets: Sequence[int], cfg: TrainConfig, seq_len: int, decay: float) -> list[tuple[int, int, int]]:
    """(budget, first decay step, last step + 1) per budget, smallest first: a branch of b tokens ends at the step
    a separate run of b tokens ends at and decays over the last `decay` share of those steps (at least one)."""
    plan = []
    for budget in sorted(budgets):
        end = replace(cfg, tokens=budget).steps(seq_len)
        plan.append((budget, end - max(1, round(decay * end)), end))
    return plan


class _Net(nn.Module):
    """Model + objective as one module, so DistributedDataParallel syncs the projector's gradients too."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, targets: Targets, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(self.model, targets, mask)


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    # The fused kernel updates each tensor in one pass: 3.5x faster than the per-tensor loop on CPU.
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), fused=True)


class Stepper:
    """One optimisation step of a model under its objective: the training loop's, and the benchmarks'."""

    def __init__(self, model: nn.Module, objective: Objective, cfg: TrainConfig, device: str = "cpu",
                 processes: int = 1, label: str = "train"):
        model.to(device).train()
        objective.to(device)
        self.objective, self.cfg, self.processes, self.label = objective, cfg, processes, label
        self.net: nn.Module = _Net(model, objective)
        if processes > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.net)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = _optimizer(self.params, cfg)
        self.autocast = bf16_autocast(device, cfg.autocast)

    def __call__(self, targets: Targets, step: int, lr: float) -> tuple[Tensor, dict[str, Tensor]]:
        """Train on one batch; returns the weighted loss and each term, averaged over processes."""
        for group in self.opt.param_groups:
            group["lr"] = lr
        mask = torch.ones_like(targets.input_ids, dtype=torch.bool)
        with self.autocast:
            loss, terms = self.net(targets, mask)
        terms = _mean_over_processes({n: v.detach() for n, v in terms.items()}, self.processes)
        total = sum(w * terms[n] for n, w in self.objective.terms.items())  # over all processes
        if not torch.isfinite(total):
            bad = next((n for n, v in terms.items() if not torch.isfinite(v)), "total")
            raise KdbenchError(f"{self.label}: non-finite loss at step {step}: term {bad!r} = {float(terms.get(bad, total))}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        return total, terms


@torch.no_grad()
def validation_loss(model: nn.Module, val: TokenSource, n: int, batch_size: int, device: str,
                    vocab: int | None = None) -> float:
    """Mean next-token cross-entropy on the first `n` validation sequences, over the first `vocab` logits as
    training (`Objective`)."""
    ce = get_loss("ce")
    losses = []
    for start in range(0, min(n, val.n_seqs), batch_size):
        t = val.batch(np.arange(start, min(n, val.n_seqs, start + batch_size)), device)
        logits = model(input_ids=t.input_ids, use_cache=False).logits[..., :vocab]
        losses.append(float(ce(StudentOutputs(logits=logits), t, torch.ones_like(t.input_ids, dtype=torch.bool))))
    return float(np.mean(losses))


def train(model: nn.Module, objective: Objective, source: BatchSource, cfg: TrainConfig, seed: int,
          ckpt_path: Path, fingerprint: str, val: TokenSource | None = None, device: str = "cpu",
          label: str = "train") -> tuple[list[dict], dict]:
    """Train `model` in place on a cosine schedule; returns the curve rows and a summary.

    `fingerprint` identifies the job (config, data, init): a checkpoint with another
    fingerprint, or written in another `CHECKPOINT_FORMAT`, is ignored rather than resumed.
    """
    run = _Run(model, objective, source, cfg, seed, ckpt_path, fingerprint, device, label)
    total = cfg.steps(source.seq_len)
    run.advance(total, lambda s: lr_at(s, total, cfg))
    return run.curve, run.finish(total, val)


def train_curve(model: nn.Module, objective: Objective, source: BatchSource, cfg: TrainConfig, seed: int,
                budgets: Sequence[int], decay: float, save: Callable[[int, list[dict], dict], None],
                ckpt_path: Path, fingerprint: str, val: TokenSource | None = None, device: str = "cpu",
                label: str = "train") -> None:
    """One warmup-stable-decay run to the largest budget that branches a decay at every budget (`branch_plan`).

    The trunk trains at the peak rate. At each budget's first decay step, a copy of model, projector and
    optimizer decays over the batches a separate run of that budget ends on, and `save(budget, curve, summary)`
    keeps it (the model is the branch's end while `save` runs); the trunk then goes on from where the branch
    left it. The largest budget's branch is the trunk's own end. A checkpoint at every branch point and every
    `checkpoint_every` trunk steps records the branches already saved, so a resumed job redoes none of them.
    """
    run = _Run(model, objective, source, cfg, seed, ckpt_path, fingerprint, device, label)
    plan = branch_plan(budgets, cfg, source.seq_len, decay)
    for budget, start, end in plan:
        if budget in run.done:
            continue
        run.advance(start, lambda s: wsd_lr(s, plan[-1][2], plan[-1][2], cfg))
        run.checkpoint(start)
        trunk = None if budget == plan[-1][0] else copy.deepcopy(run.state())
        run.advance(end, lambda s: wsd_lr(s, start, end, cfg), keep=False)
        summary = run.finish(end, val)
        save(budget, run.curve, {**summary, "branch": {"decay_start": start, "decay_steps": end - start}})
        if trunk is not None:
            run.restore(trunk, start)
        run.done.append(budget)
        run.checkpoint(start)


class _Run:
    """A training run's state across steps, checkpoints and branches; resumes from `ckpt_path` when it matches."""

    def __init__(self, model: nn.Module, objective: Objective, source: BatchSource, cfg: TrainConfig, seed: int,
                 ckpt_path: Path, fingerprint: str, device: str, label: str):
        self.rank, self.size = world()
        if cfg.batch_size % self.size:
            raise KdbenchError(f"batch_size {cfg.batch_size} is not divisible by the {self.size} processes")
        self.model, self.objective, self.source, self.cfg, self.seed = model, objective, source, cfg, seed
        self.ckpt_path, self.fingerprint, self.device, self.label = ckpt_path, fingerprint, device, label
        self.stepper = Stepper(model, objective, cfg, device, self.size, label)
        self.step, self.curve, self.done, elapsed = 0, [], [], 0.0
        state = _read_checkpoint(ckpt_path, device, label)
        if state is not None:
            if (state.get("format"), state.get("fingerprint")) == (CHECKPOINT_FORMAT, fingerprint):
                self.restore(state, state["step"])
                self.done, elapsed = state.get("done", []), state["elapsed"]
                print(f"{label}: resumed from checkpoint at step {self.step}", flush=True)
            else:
                print(f"{label}: ignoring {ckpt_path.name}, written for another job or format; starting at step 0",
                      flush=True)
        self.t0 = time.perf_counter() - elapsed

    def advance(self, stop: int, lr: Callable[[int], float], keep: bool = True) -> None:
        """Train from the current step up to `stop` at learning rate `lr(step)`; `keep`: checkpoint on the way."""
        cfg, tokens_per_step = self.cfg, self.cfg.batch_size * self.source.seq_len
        run_start = last_log = time.perf_counter()
        run_step = self.step
        for targets in batches(self.source, cfg.batch_size, self.seed, self.step, stop, self.rank, self.size,
                               self.device):
            total, terms = self.stepper(targets, self.step, lr(self.step))
            self.step += 1
            now = time.perf_counter()
            rate = (self.step - run_step) * tokens_per_step / max(now - run_start, 1e-9)
            if self.step % cfg.curve_every == 0 or self.step == stop:
                self.curve.append({"step": self.step, "tokens": self.step * tokens_per_step,
                                   "lr": self.stepper.opt.param_groups[0]["lr"], "loss": float(total),
                                   "tokens_per_s": rate, **{f"loss_{n}": float(v) for n, v in terms.items()}})
            if now - last_log >= cfg.log_every_s or self.step == stop:
                last_log = now
                parts = " ".join(f"{n} {float(v):.4f}" for n, v in terms.items())
                print(f"{self.label}: step {self.step}/{stop} tok/s {rate:,.0f} loss {float(total):.4f} ({parts})",
                      flush=True)
            if keep and self.step % cfg.checkpoint_every == 0 and self.step < stop:
                self.checkpoint(self.step)

    def finish(self, steps: int, val: TokenSource | None) -> dict:
        """The summary of the model as it stands after `steps` steps (with its validation loss on rank 0)."""
        if self.size > 1:
            dist.barrier()
        summary = {"steps": steps, "processes": self.size, "tokens": steps * self.cfg.batch_size * self.source.seq_len,
                   "seconds": time.perf_counter() - self.t0, "final_loss": self.curve[-1]["loss"] if self.curve else None}
        if val is not None and self.rank == 0:
            self.model.eval()
            summary["val_loss"] = validation_loss(self.model, val, self.cfg.val_seqs, self.cfg.batch_size, self.device,
                                                  self.objective.vocab)
            self.model.train()
            print(f"{self.label}: validation loss {summary['val_loss']:.4f}", flush=True)
        return summary

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.stepper.opt.state_dict(), "step": self.step, "curve": list(self.curve)}

    def restore(self, state: dict, step: int) -> None:
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.stepper.opt.load_state_dict(state["optimizer"])
        self.step, self.curve = step, [r for r in state["curve"] if r["step"] <= step]

    def checkpoint(self, step: int) -> None:
        if self.rank != 0 or step != self.step:
            return
        state = {**self.state(), "done": list(self.done), "elapsed": time.perf_counter() - self.t0,
                 "fingerprint": self.fingerprint, "format": CHECKPOINT_FORMAT}
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)


def batches(source: BatchSource, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, size: int = 1,
            device: str = "cpu") -> Iterator[Targets]:
    """This process's share of the batches of steps start..stop-1.

    Read in the training thread: reading ahead on a second thread measured 1.6x slower on
    2 cores, the reader's tensor conversions competing with the step's own threads.
    """
    for step in range(start, stop):
        yield source.batch(batch_indices(source.n_seqs, batch_size, step, seed)[rank::size], device)


def _mean_over_processes(terms: dict[str, Tensor], size: int) -> dict[str, Tensor]:
    """Average logged loss terms over processes, so curves do not depend on the process count."""
    if size == 1:
        return terms
    stacked = torch.stack(list(terms.values()))
    dist.all_reduce(stacked)
    return dict(zip(terms, stacked / size))


def _read_checkpoint(path: Path, device: str, label: str) -> dict | None:
    """The checkpoint's state; an unreadable one (truncated, corrupt) is set aside as `<name>.corrupt`, so the
    job starts over instead of failing on every rerun."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if isinstance(state, dict):
            return state
        why = f"holds a {type(state).__name__}, not a checkpoint"
    except Exception as e:  # torch reports a damaged zip or pickle stream in several exception types
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
    aside = path.with_name(path.name + ".corrupt")
    with contextlib.suppress(FileNotFoundError):  # another process of the job set it aside first
        path.replace(aside)
    print(f"{label}: checkpoint {path} is unreadable ({why}); set aside as {aside.name}, starting at step 0",
          flush=True)
    return None


def write_curve(rows: list[dict], path: Path) -> None:
    """Curve rows -> CSV (columns: step, tokens, lr, loss, tokens_per_s, loss_<term>...)."""
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
