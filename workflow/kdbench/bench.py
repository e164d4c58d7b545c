"""Benchmarks, measured side by side in one process on the same tokens.

    python -m kdbench.bench cache   # cache writing vs bare teacher forward; batch read vs training step; k sweep
    python -m kdbench.bench train   # tokens/s: plain CE vs cache-fed KD vs online KD (teacher in the loop)
    python -m kdbench.bench gpu     # on CUDA, at the real preset's shapes: tokens/s, MFU, peak memory, online/cached
    python -m kdbench.bench fidelity [--teacher T --data D]  # layer-target options: loss/gradient error of each
    python -m kdbench.bench outcome --results R            # students from the exact vs the compact cache, paired
    python -m kdbench.bench branches --results results/default --budgets 100000 400000  (--configfile PRESET)
                                    # budget-curve branches vs separate cosine runs of the same length

Sizes follow config/config.yaml (teacher, student, seq_len). Contenders are timed in interleaved
rounds, so a noisy shared machine slows all alike: rates are each contender's fastest round, and
ratios the median over rounds of back-to-back ratios. Results print and go to
results/benchmarks/<name>.json.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from kdbench.schema.arms import ArmConfig, Capture, capture_for
from kdbench.cache.store import TeacherCache
from kdbench.cache.capture import (OnlineTeacher, fit_bases, layer_fidelity, reconstruction_kl,
                                   teacher_taps, topk_targets, write_teacher_cache)
from kdbench.schema.config import CacheConfig, TrainConfig
from kdbench.data.tokens import batch_indices, load_tokens
from kdbench.schema.experiment import Experiment, load_experiment
from kdbench.io import write_json
from kdbench.memory import keep_freed_memory
from kdbench.models.causal_lm import build_model, forward_taps, load_model, width
from kdbench.train.loop import Objective, Stepper, TokenSource, batches
from kdbench.tools.retrain import bench_branches, bench_outcome, default_experiment

REPO = Path(__file__).resolve().parents[2]
VOCAB = 1024
PARTS = ("logit", "hidden")  # arms timed beside logit_hidden: what each of its two parts costs


def _experiment(layer_rank: int = 0) -> Experiment:
    """The default experiment, with `cache.layer_rank` set (`--layer-rank`)."""
    exp = default_experiment()
    return replace(exp, cache=replace(exp.cache, layer_rank=layer_rank))


def _teacher(exp: Experiment, path: Path | None):
    """A trained teacher when given (realistic top-k tails), else a random one of the configured size."""
    if path is not None:
        return load_model(path).eval()
    return build_model(exp.teacher.arch, VOCAB, exp.data.seq_len, 0, seed=0).eval()


def _tokens(n_seqs: int, seq_len: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(n_seqs, seq_len)).astype(np.uint16)


def _race(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each fn in each of `rounds` rounds that call every fn in turn.

    Interleaving puts slow phases of a shared machine on all contenders alike; the order
    alternates between rounds so neither end of a round favours one contender.
    """
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            times[name].append(_timed(fns[name]))
    return times


def _paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """Speed of `a` over speed of `b`: the median over rounds of back-to-back ratios, robust to drift."""
    return float(np.median(np.array(times[b]) / np.array(times[a])))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _trainer(exp: Experiment, arm: ArmConfig, source, n_teacher: int, d_teacher: int, capture: Capture, steps: int,
             vocab: int = VOCAB, device: str = "cpu"):
    """A callable that runs `steps` steps of the training loop's own `Stepper` on a fresh student."""
    cfg: TrainConfig = exp.student.train
    model = build_model(exp.student.arch, vocab, exp.data.seq_len, 0, seed=0)
    objective = Objective(arm, arm.pairs(exp.student.arch.n_layer, n_teacher), capture, model, d_teacher, 0)
    stepper = Stepper(model, objective, cfg, device, label="bench")

    def run() -> None:
        batches_ = batches(source, cfg.batch_size, 0, 0, steps, device=device)  # as the training loop reads them
        for step, targets in enumerate(batches_):
            stepper(targets, step, cfg.lr)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run


def bench_cache(teacher_path: Path | None, n_seqs: int, rounds: int, layer_rank: int = 0) -> dict:
    exp = _experiment(layer_rank)
    teacher = _teacher(exp, teacher_path)
    vocab = teacher.config.vocab_size
    tokens = _tokens(n_seqs, exp.data.seq_len, vocab)
    capture = capture_for(exp.arms, exp.student.arch.n_layer, exp.teacher.arch.n_layer)
    cfg = exp.cache
    n_tokens = tokens.size
    tmp = Path(tempfile.mkdtemp(prefix="kdbench-bench-"))
    try:
        @torch.no_grad()
        def forward() -> None:
            for b in range(0, n_seqs, cfg.batch_size):
                ids = torch.from_numpy(tokens[b : b + cfg.batch_size].astype(np.int64))
                forward_taps(teacher, ids, **asdict(capture))

        aside = itertools.count()

        def write() -> None:
            if (tmp / "cache").exists():  # a cache job starts without one: set the last aside, delete it untimed
                (tmp / "cache").rename(tmp / f"old{next(aside)}")
            write_teacher_cache(teacher, tokens, {"teacher_sha256": "bench"}, cfg, capture, tmp / "cache", tmp / "work")

        times = _race({"forward": forward, "write": write}, rounds)
        forward_rate, write_rate = n_tokens / min(times["forward"]), n_tokens / min(times["write"])
        cache = TeacherCache(tmp / "cache")
        bytes_pt = cache.manifest["bytes_per_token"]
        logit_bytes = sum(bytes_pt[c] for c in ("topk_logprobs", "topk_ids", "tail_logprob"))
        arm = exp.arms["logit_hidden"]
        cache.select(arm.components)  # what the measured training step reads
        batch = exp.student.train.batch_size
        idx = batch_indices(cache.n_seqs, batch, 0, 0)
        cold_s = _timed(lambda: cache.batch(idx))  # written with direct I/O: the first read comes from disk
        read_s = min(_timed(lambda: cache.batch(idx)) for _ in range(20))

        def crc32_all() -> None:  # what a student job checks on first read, over the whole cache
            for shard in range(len(cache.manifest["shards"])):
                for name in arm.components:
                    cache.check_crc32(shard, name)

        crc_cold_s = _timed(crc32_all)  # partly read by the batches above; the rest comes from disk
        crc_s = min(_timed(crc32_all) for _ in range(3))
        step_s = min(_race({"step": _trainer(exp, arm, cache, exp.teacher.arch.n_layer, width(teacher), capture,
                                             steps=1)}, rounds=5)["step"])
        with torch.no_grad():
            logits = teacher(input_ids=torch.from_numpy(tokens[:16].astype(np.int64))).logits
        sweep = []
        for k in (8, 16, 32, 64, 128):
            values, ids, tail = topk_targets(logits, k)
            sweep.append({"k": k, "logit_bytes_per_token": 4 * k + 4,
                          "kl_topk": float(reconstruction_kl(logits, values, ids, tail).mean()),
                          "tail_mass": float(tail.exp().mean())})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kl = next(s["kl_topk"] for s in sweep if s["k"] == cfg.top_k) if cfg.top_k in (8, 16, 32, 64, 128) else None
    return {
        "teacher": str(teacher_path) if teacher_path else "random init (pass --teacher for realistic KL)",
        "tokens": n_tokens, "k": cfg.top_k, "forward_tokens_per_s": forward_rate, "write_tokens_per_s": write_rate,
        "write_over_forward": _paired(times, "write", "forward"),
        "write_over_forward_best": write_rate / forward_rate, "bytes_per_token": bytes_pt,
        "logit_bytes_per_token": logit_bytes, "read_batch_s": read_s, "read_batch_cold_s": cold_s, "train_step_s": step_s,
        "read_share_of_step": read_s / step_s,
        "crc32_first_read_s": crc_s, "crc32_first_read_cold_s": crc_cold_s,
        # a student trains on every cached token, so this is the check's share of its training time
        "crc32_share_of_training": (crc_s / n_tokens) / (step_s / (batch * exp.data.seq_len)), "kl_topk": kl, "k_sweep": sweep,
        "threads": torch.get_num_threads(),
    }


def bench_train(teacher_path: Path | None, n_seqs: int, steps: int, rounds: int, layer_rank: int = 0) -> dict:
    exp = _experiment(layer_rank)
    teacher = _teacher(exp, teacher_path)
    vocab = teacher.config.vocab_size
    tokens = _tokens(n_seqs, exp.data.seq_len, vocab)
    arm = exp.arms["logit_hidden"]
    parts = [name for name in PARTS if name in exp.arms]
    n_teacher = exp.teacher.arch.n_layer
    capture = capture_for({"logit_hidden": arm}, exp.student.arch.n_layer, n_teacher)
    tmp = Path(tempfile.mkdtemp(prefix="kdbench-bench-"))
    try:
        write_teacher_cache(teacher, tokens, {"teacher_sha256": "bench"}, exp.cache, capture, tmp / "cache", tmp / "work")
        d_t = width(teacher)

        def cached(a: ArmConfig):
            cache = TeacherCache(tmp / "cache")
            cache.select(a.components)  # as the training job reads it
            return _trainer(exp, a, cache, n_teacher, d_t, capture, steps)

        online_source = OnlineTeacher(teacher, tokens, exp.cache.top_k, exp.cache, capture, "cpu")
        times = _race({
            "ce": _trainer(exp, ArmConfig(terms={"ce": 1.0}), TokenSource(tokens), n_teacher, d_t, Capture(), steps),
            "cached_kd": cached(arm),
            "online_kd": _trainer(exp, arm, online_source, n_teacher, d_t, capture, steps),
            **{f"cached_{name}": cached(exp.arms[name]) for name in parts},
        }, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step_tokens = steps * exp.student.train.batch_size * exp.data.seq_len
    rates = {f"{name}_tokens_per_s": step_tokens / min(t) for name, t in times.items()}
    return {"arm": "logit_hidden", "steps": steps, "rounds": rounds, **rates,
            "cached_kd_over_ce": _paired(times, "cached_kd", "ce"),
            "cached_kd_over_ce_best": rates["cached_kd_tokens_per_s"] / rates["ce_tokens_per_s"],
            "cached_kd_over_online_kd": _paired(times, "cached_kd", "online_kd"),
            **{f"cached_{name}_over_ce": _paired(times, f"cached_{name}", "ce") for name in parts},
            "threads": torch.get_num_threads()}


def _preset(preset: Path):
    """A preset's experiment (merged over the default, as snakemake merges) and a random teacher of its shapes, from
    its config under config/models/ (seeded)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from kdbench.schema.checks import load_config

    exp = load_experiment({**load_config([REPO / "config" / "config.yaml", preset]), "gpus": 1})
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(str(REPO / "config" / "models" / exp.teacher.source))
    return exp, AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()  # as load_model loads


RANKS = (16, 32, 64, 128, 256)  # `fidelity`'s compact options: one rank for every component, and per component
PER_COMPONENT = {"hidden": 128, "attention_qk": 256, "qkv": 256}


def _sweep(teacher, tokens: np.ndarray, cfg: CacheConfig, capture: Capture, batch: int) -> dict:
    """`layer_fidelity` of every layer-target option (the stored dtypes, int8 hidden states, compact at each of
    `RANKS` and at `PER_COMPONENT`) on tokens[batch : 2 batch], with bases fitted on tokens[:batch] as a cache job
    fits them (once, at the largest rank: a smaller rank's basis is its leading rows)."""
    cfg = replace(cfg, forward_dtype="float32")
    seqs = tokens[batch : 2 * batch]
    taps = teacher_taps(teacher, seqs, cfg, capture, "cpu")
    full = fit_bases(teacher_taps(teacher, tokens[:batch], cfg, capture, "cpu"), replace(cfg, layer_rank=max(RANKS)))
    options = {"bfloat16": replace(cfg, hidden_dtype="bfloat16", layer_rank=0),
               "int8": replace(cfg, hidden_dtype="int8", layer_rank=0),
               **{f"rank{r}": replace(cfg, layer_rank=r) for r in RANKS},
               "per_component": replace(cfg, layer_rank=PER_COMPONENT)}
    return {name: layer_fidelity(taps, seqs, option, {n: b[:, : 1 + option.rank(n)] for n, b in full.items()
                                                      if option.rank(n)}) for name, option in options.items()}


def bench_fidelity(teacher_path: Path | None, data_dir: Path | None, preset: Path, seqs: int) -> dict:
    """Loss and gradient error of each layer-target option against exact targets (`compact.fidelity`), on the default
    teacher when given (trained, over its training sequences in `data_dir`, `cache.batch_size` a batch) and on a
    random teacher of `preset`'s shapes (`seqs` random sequences a batch), each reading its experiment's capture."""
    out = {}
    if teacher_path:
        exp = _experiment()
        teacher, tokens = load_model(teacher_path).eval(), load_tokens(Path(data_dir) / "train.npy")
        capture = capture_for(exp.arms, exp.student.arch.n_layer, exp.teacher.arch.n_layer)
        out["default_teacher"] = _sweep(teacher, tokens, exp.cache, capture, exp.cache.batch_size)
    pexp, big = _preset(preset)
    pcapture = capture_for(pexp.arms, pexp.student.arch.n_layer, big.config.num_hidden_layers)
    out["random_" + pexp.experiment] = _sweep(big, _tokens(2 * seqs, pexp.data.seq_len, big.config.vocab_size),
                                              pexp.cache, pcapture, seqs)
    return out


def bench_gpu(preset: Path, steps: int, rounds: int, device: str = "cuda") -> dict:
    """The real preset's teacher and student shapes with random weights on one GPU: `logit_hidden` from a
    cache and online, tokens/s, model FLOPs utilisation against the GPU's bf16 peak, peak memory.

    `device="cpu"` runs the same code on a tiny preset (the tests do)."""
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench gpu: no CUDA device here; run `make gpu-check` on a machine with a GPU")
    from kdbench.models.causal_lm import describe
    from kdbench.schema.plan import PEAK_TFLOPS, arch_shape, described_shape

    exp, teacher = _preset(preset)
    teacher, teacher_config = teacher.to(device), teacher.config
    vocab, seq_len, batch = teacher_config.vocab_size, exp.data.seq_len, exp.student.train.batch_size
    tokens = _tokens(batch * steps, seq_len, vocab)
    arm, n_teacher = exp.arms["logit_hidden"], teacher_config.num_hidden_layers
    capture = capture_for({"logit_hidden": arm}, exp.student.arch.n_layer, n_teacher)
    cfg = replace(exp.cache, forward_dtype="bfloat16" if cuda else "float32")
    tmp = Path(tempfile.mkdtemp(prefix="kdbench-gpu-"))
    try:
        write_teacher_cache(teacher, tokens, {"teacher_sha256": "bench"}, cfg, capture, tmp / "cache", tmp / "work",
                            device)
        cache = TeacherCache(tmp / "cache")
        cache.select(arm.components)
        d_t = teacher_config.hidden_size
        online = OnlineTeacher(teacher, tokens, cfg.top_k, cfg, capture, device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = _race({"cached": _trainer(exp, arm, cache, n_teacher, d_t, capture, steps, vocab, device),
                       "online": _trainer(exp, arm, online, n_teacher, d_t, capture, steps, vocab, device)}, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step_tokens = steps * batch * seq_len
    rates = {name: step_tokens / min(t) for name, t in times.items()}
    student_flops = 3 * arch_shape(exp.student.arch, vocab).forward_flops(seq_len)  # forward + backward, per token
    peak = PEAK_TFLOPS * 1e12
    return {"device": torch.cuda.get_device_name(0) if cuda else device, "preset": str(preset), "steps": steps,
            "rounds": rounds,
            "cached_tokens_per_s": rates["cached"], "online_tokens_per_s": rates["online"],
            "online_over_cached": _paired(times, "cached", "online"),
            "cached_student_mfu": rates["cached"] * student_flops / peak,
            "online_mfu": rates["online"] * (student_flops + described_shape(describe(teacher)).forward_flops(seq_len)) / peak,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None, "peak_tflops_assumed": PEAK_TFLOPS}


def _flat(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        elif not isinstance(value, list):
            yield f"{prefix}{key}", value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kdbench.bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=("cache", "train", "gpu", "fidelity", "outcome", "branches"))
    parser.add_argument("--preset", type=Path, default=REPO / "config" / "presets" / "pythia.yaml",
                        help="gpu, fidelity: the real preset whose shapes are used (its teacher config under "
                             "config/models/)")
    parser.add_argument("--teacher", type=Path, help="a trained teacher directory (default: random init)")
    parser.add_argument("--data", type=Path, help="fidelity: the teacher's data directory (train.npy)")
    parser.add_argument("--results", type=Path, help="outcome: a run's results/<experiment> (teacher, data, "
                        "students/init, eval/tasks); branches: a finished run with budget curves (default "
                        "results/default)")
    parser.add_argument("--layer-rank", type=int, default=0, help="cache, train: cache.layer_rank of the cache "
                        "(default 0: exact); outcome: the compact cache's (default 64)")
    parser.add_argument("--seqs", type=int, help="sequences of seq_len tokens to process (default: cache 2048, "
                        "8 shards, so the once-per-job costs weigh as in a job; train 512; fidelity: the preset "
                        "teacher's batch, 8)")
    parser.add_argument("--seeds", type=int, default=3, help="outcome: seeds per arm and cache")
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed call (train)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100000, 400000], help="branches: budgets compared")
    parser.add_argument("--configfile", type=Path, help="branches: the preset the run was made with, if any")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as in every pipeline job
    if (args.name == "fidelity" and bool(args.teacher) != bool(args.data)) or (args.name == "outcome" and not args.results):
        parser.error("fidelity takes --teacher with --data (or neither: the preset's random teacher only); "
                     "outcome needs --results")
    if args.name == "cache":
        result = bench_cache(args.teacher, args.seqs or 2048, args.rounds, args.layer_rank)
    elif args.name == "gpu":
        result = bench_gpu(args.preset, args.steps, args.rounds)
    elif args.name == "fidelity":
        result = bench_fidelity(args.teacher, args.data, args.preset, args.seqs or 8)
    elif args.name == "outcome":
        result = bench_outcome(args.results, args.layer_rank or 64, args.seeds)
    elif args.name == "branches":
        result = bench_branches(args.results or REPO / "results" / "default", args.budgets, args.configfile, args.out / "branches")
    else:
        result = bench_train(args.teacher, args.seqs or 512, args.steps, args.rounds, args.layer_rank)
    for key, value in _flat(result):
        print(f"{key:>28}  {value:,.4g}" if isinstance(value, float) else f"{key:>28}  {value}")
    write_json(args.out / f"{args.name}.json", result)
    print(f"wrote {args.out / f'{args.name}.json'}")


if __name__ == "__main__":
    main()
