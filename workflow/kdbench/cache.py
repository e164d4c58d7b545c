"""Teacher activation cache: memory-mapped, checksummed shards written once, read by every student.

Layout of a cache directory::

    manifest.json              identity (teacher, tokenizer, tokens, capture settings), shapes, sha256 per file
    fidelity.json              bytes per token per component, KL(full || top-k reconstruction), tail mass
    00000.input_ids.npy        (S, T)        token ids, narrowest unsigned dtype
    00000.topk_logprobs.npy    (S, T, k)     teacher log-probs of the next token, float16
    00000.topk_ids.npy         (S, T, k)     their ids, narrowest unsigned dtype
    00000.tail_logprob.npy     (S, T)        log of the mass outside the top-k, float32
    00000.hidden.npy           (S, L, T, D)  mapped layers' outputs, bfloat16 stored as uint16
    00000.attentions.npy       (S, L, H, T(T+1)/2) optional, float16: the causal maps' lower triangles, row by row
    00000.qkv.npy              (S, L, 3, T, D) optional, bfloat16 stored as uint16

Plain `.npy` files load without pickle or code execution and memory-map, so a batch is a
few slices. Shards are built in a work directory and kept across interruptions: a restarted
job resumes at the first missing shard when the identity still matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from kdbench import KdbenchError
from kdbench.data import token_dtype
from kdbench.io import DirectWriter, atomic_path, read_json, sha256_file, write_json
from kdbench.losses import Targets, flat_ids, zero_at

FORMAT = "kdbench-cache/3"  # 2: per-component layer lists in the capture settings; 3: packed causal attentions
COMPONENTS = ("input_ids", "topk_logprobs", "topk_ids", "tail_logprob", "hidden", "attentions", "qkv")
_STAGING_BYTES = 4 << 20  # per component: direct writes of 4 MiB
_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class CacheConfig:
    top_k: int = 32                 # 4k + 4 bytes/token of logits; KL to the full distribution in fidelity.json
    hidden_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # bf16 keeps the range of activations
    shard_seqs: int = 256           # sequences per shard: the unit of resume and of checksums
    batch_size: int = 32            # teacher forward batch
    forward_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 autocast on GPUs


@dataclass(frozen=True)
class Capture:
    """The teacher layers whose activations the arms need, per component (derived from the arms)."""
    hidden: tuple[int, ...] = ()
    attentions: tuple[int, ...] = ()
    qkv: tuple[int, ...] = ()

    @classmethod
    def from_settings(cls, settings: dict) -> "Capture":
        """The capture a cache was written with, from its manifest's settings."""
        return cls(**{f.name: tuple(settings[f.name]) for f in fields(cls)})


def _storage(arr_dtype: str) -> np.dtype:
    """bfloat16 has no numpy dtype: store its bits as uint16."""
    return np.dtype(np.uint16) if arr_dtype == "bfloat16" else np.dtype(arr_dtype)


def _to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    t = t.detach().to(_TORCH[dtype]).cpu()
    return (t.view(torch.uint16) if dtype == "bfloat16" else t).numpy()


def _to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


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


def write_cache(teacher, tokens: np.ndarray, identity: dict, cfg: CacheConfig, capture: Capture,
                out_dir: Path, work_dir: Path, device: str = "cpu") -> dict:
    """Run the teacher once over `tokens` (N, T) and write the cache into `out_dir`.

    `identity` holds the hashes that make a cache valid for a consumer (teacher, tokenizer,
    tokens). Shards accumulate in `work_dir`; on success it is renamed to `out_dir`.
    """
    settings = {**asdict(cfg), **asdict(capture)}
    settings.pop("batch_size")  # does not change the contents
    identity = json.loads(json.dumps({**identity, "settings": settings}))  # as it reads back from disk
    work_dir = Path(work_dir)
    if work_dir.exists() and (not (work_dir / "identity.json").exists() or read_json(work_dir / "identity.json") != identity):
        shutil.rmtree(work_dir)
    write_json(work_dir / "identity.json", identity)
    teacher.eval().to(device)
    if capture.attentions:
        teacher.set_attn_implementation("eager")
    n, seq_len = tokens.shape
    vocab = teacher.config.vocab_size
    k = min(cfg.top_k, vocab)
    shards, fid = [], {"kl": [], "tail": []}
    started, done_tokens, staging = time.perf_counter(), 0, {}
    with ThreadPoolExecutor(max_workers=1) as pool:  # writes (in order) overlap the next forward passes
        try:
            in_flight: deque = deque()
            for index, start in enumerate(range(0, n, cfg.shard_seqs)):
                stop = min(start + cfg.shard_seqs, n)
                meta_path = work_dir / f"{index:05d}.json"
                if meta_path.exists():
                    shards.append(pool.submit(read_json, meta_path))
                    continue
                writer = _ShardWriter(work_dir, index, start, stop - start, staging)
                for b in range(start, stop, cfg.batch_size):
                    arrays = _forward_batch(teacher, tokens[b : min(b + cfg.batch_size, stop)], k, cfg, capture,
                                            device, fid if b == 0 else None)
                    in_flight.append(pool.submit(writer.add, arrays))
                    while len(in_flight) > 2:  # bounds memory; a write error (e.g. a full disk) surfaces here
                        in_flight.popleft().result()
                shards.append(pool.submit(writer.finish))
                in_flight.append(shards[-1])
                done_tokens += (stop - start) * seq_len
                rate = done_tokens / (time.perf_counter() - started)
                print(f"cache: shard {index} seqs {stop}/{n} {rate:,.0f} tok/s", flush=True)
            shards = [f.result() for f in shards]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # no later shard completes after a failed one
            raise
    if not fid["kl"]:  # shard 0 came from an interrupted run: measure fidelity on the same sample
        _forward_batch(teacher, tokens[: cfg.batch_size], k, cfg, capture, device, fid)
    shards.sort(key=lambda s: s["index"])
    manifest = {
        "format": FORMAT, **identity, "n_seqs": n, "seq_len": seq_len, "vocab_size": vocab, "top_k": k,
        "shards": shards, "bytes_per_token": _bytes_per_token(shards, n * seq_len),
    }
    write_json(work_dir / "manifest.json", manifest)
    write_json(work_dir / "fidelity.json", {
        "top_k": k, "bytes_per_token": manifest["bytes_per_token"],
        "kl_topk_mean": float(np.mean(fid["kl"])), "tail_mass_mean": float(np.mean(fid["tail"])),
        "n_positions": len(fid["kl"]),
    })
    (work_dir / "identity.json").unlink()
    if Path(out_dir).exists():
        shutil.rmtree(out_dir)
    work_dir.rename(out_dir)
    return manifest


@torch.no_grad()
def _forward_batch(teacher, seqs: np.ndarray, k: int, cfg: CacheConfig, capture: Capture, device: str,
                   fidelity: dict | None) -> dict[str, tuple[np.ndarray, str]]:
    """One teacher forward pass over `seqs` -> {component: (array, stored dtype)}."""
    from kdbench.models import forward_taps
    from kdbench.train import bf16_autocast

    ids = torch.from_numpy(seqs.astype(np.int64)).to(device)
    with bf16_autocast(device, cfg.forward_dtype == "bfloat16"):
        taps = forward_taps(teacher, ids, **asdict(capture))
    values, top_ids, tail = topk_targets(taps.logits, k)
    if fidelity is not None:
        fidelity["kl"].extend(reconstruction_kl(taps.logits, values, top_ids, tail).flatten().tolist())
        fidelity["tail"].extend(tail.exp().flatten().tolist())
    id_dtype = str(token_dtype(teacher.config.vocab_size))
    arrays = {"input_ids": (seqs, str(seqs.dtype)), "topk_logprobs": (_to_numpy(values, "float16"), "float16"),
              "topk_ids": (top_ids.cpu().numpy().astype(id_dtype), id_dtype),
              "tail_logprob": (_to_numpy(tail, "float32"), "float32")}
    for name, dtype in (("hidden", cfg.hidden_dtype), ("qkv", cfg.hidden_dtype)):
        if getattr(taps, name):
            arrays[name] = (_to_numpy(taps.stacked(name, _TORCH[dtype]), dtype), dtype)
    if taps.attentions:
        maps = taps.stacked("attentions", torch.float16)  # (B, L, H, T, T); packing half the bytes
        if fidelity is not None and maps.triu(1).any():  # checked on the sample batch
            raise KdbenchError("cache: the teacher's attention maps have weight above the diagonal; "
                               "packed attention storage needs a causal LM")
        packed = maps.flatten(-2).index_select(-1, _causal_index(maps.shape[-1], str(maps.device)))
        arrays["attentions"] = (_to_numpy(packed, "float16"), "float16")
    return arrays


@lru_cache(maxsize=8)
def _causal_index(seq_len: int, device: str) -> torch.Tensor:
    """Flat positions (row * T + col) of a T x T map's lower triangle, row by row."""
    rows, cols = torch.tril_indices(seq_len, seq_len, device=device)
    return rows * seq_len + cols


def _unpack_causal(packed: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(..., T(T+1)/2) packed lower triangles -> (..., T, T) maps, zero above the diagonal."""
    maps = packed.new_zeros(*packed.shape[:-1], seq_len * seq_len)
    maps.index_copy_(-1, _causal_index(seq_len, str(packed.device)), packed)
    return maps.unflatten(-1, (seq_len, seq_len))


class _ShardWriter:
    """Streams one shard's components batch by batch into `.npy` files, hashing the bytes as they go.

    Each file is a hidden temp file until `finish` renames it; the shard's meta JSON, written
    last, is what marks the shard complete for a resumed job. Files go out with direct I/O
    through `staging`, one page-aligned buffer per component kept across shards.
    """

    def __init__(self, work_dir: Path, index: int, start: int, n_seqs: int, staging: dict[str, mmap.mmap]):
        self.work_dir, self.index, self.start, self.n_seqs, self.staging = work_dir, index, start, n_seqs, staging
        self._stack = ExitStack()
        self._files: dict[str, dict] = {}

    def add(self, arrays: dict[str, tuple[np.ndarray, str]]) -> None:
        for name, (arr, dtype) in arrays.items():
            if name not in self._files:
                self._files[name] = self._open(name, arr, dtype)
            f = self._files[name]
            data = np.ascontiguousarray(arr).data
            f["handle"].write(data)
            f["hash"].update(data)
            f["rows"] += len(arr)

    def _open(self, name: str, arr: np.ndarray, dtype: str) -> dict:
        path = self.work_dir / f"{self.index:05d}.{name}.npy"
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {
            "descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False,
            "shape": (self.n_seqs, *arr.shape[1:])})
        if name not in self.staging:
            self.staging[name] = DirectWriter.staging(_STAGING_BYTES)
        handle = DirectWriter(self._stack.enter_context(atomic_path(path)), self.staging[name])
        handle.write(header.getvalue())
        return {"path": path, "handle": handle, "hash": hashlib.sha256(header.getvalue()), "rows": 0,
                "shape": [self.n_seqs, *arr.shape[1:]], "dtype": dtype}

    def finish(self) -> dict:
        for f in self._files.values():
            f["handle"].close()
            if f["rows"] != self.n_seqs:
                raise KdbenchError(f"cache shard {self.index:05d}: {f['path'].name} got {f['rows']} of {self.n_seqs} rows")
        self._stack.close()  # fsync and rename every file
        files = {name: {"file": f["path"].name, "shape": f["shape"], "dtype": f["dtype"],
                        "bytes": f["path"].stat().st_size, "sha256": f["hash"].hexdigest()}
                 for name, f in self._files.items()}
        meta = {"index": self.index, "start": self.start, "n_seqs": self.n_seqs, "files": files}
        write_json(self.work_dir / f"{self.index:05d}.json", meta)
        return meta


def _bytes_per_token(shards: list[dict], n_tokens: int) -> dict[str, float]:
    total: dict[str, int] = {}
    for s in shards:
        for name, f in s["files"].items():
            total[name] = total.get(name, 0) + int(np.prod(f["shape"])) * _storage(f["dtype"]).itemsize
    return {name: b / n_tokens for name, b in total.items()}


class TeacherCache:
    """Read side: checks the manifest on open, memory-maps shards, serves `Targets` batches."""

    def __init__(self, path: Path, expect: dict | None = None, verify: bool = False):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise KdbenchError(f"cache {self.path}: no manifest.json (incomplete or not a cache); rerun cache_teacher")
        self.manifest = m = read_json(manifest_path)
        if m.get("format") != FORMAT:
            raise KdbenchError(f"cache {self.path}: format {m.get('format')!r}, expected {FORMAT!r}")
        for key, want in (expect or {}).items():
            have = m.get(key, m["settings"].get(key))
            if have != want:
                raise KdbenchError(f"cache {self.path} is stale: {key} is {_short(have)} but expected {_short(want)}; rerun cache_teacher")
        self.n_seqs, self.seq_len, self.vocab_size = m["n_seqs"], m["seq_len"], m["vocab_size"]
        self._starts = np.array([s["start"] for s in m["shards"]])
        self._arrays: list[dict[str, np.ndarray]] = []
        for shard in m["shards"]:
            arrays = {}
            for name, f in shard["files"].items():
                arrays[name] = self._open(shard, name, f, verify)
            self._arrays.append(arrays)
        self.components = tuple(self._arrays[0]) if self._arrays else ()
        self._dtypes = {name: f["dtype"] for name, f in m["shards"][0]["files"].items()} if m["shards"] else {}

    def _open(self, shard: dict, name: str, f: dict, verify: bool) -> np.ndarray:
        path = self.path / f["file"]
        where = f"cache shard {shard['index']:05d} ({f['file']})"
        if not path.exists():
            raise KdbenchError(f"{where}: file missing")
        if path.stat().st_size != f["bytes"]:
            raise KdbenchError(f"{where}: size {path.stat().st_size} bytes, manifest says {f['bytes']}")
        if verify and sha256_file(path) != f["sha256"]:
            raise KdbenchError(f"{where}: sha256 mismatch, the file is corrupt or was replaced")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise KdbenchError(f"{where}: unreadable ({e})") from e
        if list(arr.shape) != f["shape"] or arr.dtype != _storage(f["dtype"]):
            raise KdbenchError(f"{where}: shape/dtype {arr.shape}/{arr.dtype} differ from the manifest")
        return arr.view(np.ndarray)  # the same mapping, without np.memmap's per-index Python overhead

    def select(self, components: tuple[str, ...]) -> None:
        """Serve only `components` from now on (a training batch reads nothing it does not use)."""
        missing = [c for c in components if c not in self._dtypes]
        if missing:
            raise KdbenchError(f"cache {self.path} holds no {', '.join(missing)} (it has {', '.join(self._dtypes)}); "
                               "rerun cache_teacher with the arm in the config")
        self.components = tuple(components)

    def gather(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` of one component as stored, in the given order."""
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        local = idx - self._starts[shard]
        first = self._arrays[0][name]
        out = np.empty((len(idx), *first.shape[1:]), first.dtype)
        for row, (s, i) in enumerate(zip(shard.tolist(), local.tolist())):
            out[row] = self._arrays[s][name][i]
        return out

    def batch(self, idx: np.ndarray, device: str = "cpu") -> Targets:
        """The `Targets` for sequences `idx`; float components become float32 on `device`."""
        def get(name: str) -> torch.Tensor | None:
            if name not in self.components:
                return None
            t = _to_torch(self.gather(name, idx), self._dtypes[name])
            t = (t.long() if name in ("input_ids", "topk_ids") else t.float()).to(device, non_blocking=True)
            return _unpack_causal(t, self.seq_len) if name == "attentions" else t
        return Targets(**{name: get(name) for name in COMPONENTS})


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 24 else s[:20] + "...'"


def cache_teacher(teacher_dir: Path, data_dir: Path, cfg: CacheConfig, arms: dict, n_student_layers: int,
                  student_tokens: int, out_dir: Path, work_dir: Path) -> dict:
    """Cache what the arms need from the teacher over the sequences a student's token budget covers.

    That is the first ceil(student_tokens / seq_len) training sequences (all of them if fewer);
    students then draw seeded permutations of exactly these.
    """
    from kdbench.arms import capture_for
    from kdbench.data import load_tokens
    from kdbench.models import blocks, load_model, load_tokenizer, tokenizer_sha256, weights_sha256, width
    from kdbench.train import device_for_rank

    teacher = load_model(teacher_dir)
    tokens = load_tokens(Path(data_dir) / "train.npy")
    tokens = tokens[: math.ceil(student_tokens / tokens.shape[1])]
    n_teacher = len(blocks(teacher))
    capture = capture_for(arms, n_student_layers, n_teacher)
    identity = {
        "teacher_sha256": weights_sha256(teacher_dir),
        "tokenizer_sha256": tokenizer_sha256(load_tokenizer(teacher_dir)),
        "tokens_sha256": hashlib.sha256(np.ascontiguousarray(tokens).tobytes()).hexdigest(),
        "teacher_layers": n_teacher, "teacher_width": width(teacher),
    }
    return write_cache(teacher, np.ascontiguousarray(tokens), identity, cfg, capture, out_dir, work_dir,
                       device_for_rank())
