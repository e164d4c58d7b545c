"""The teacher cache's storage format: memory-mapped, checksummed shards written once, read by every student.

What goes into a cache (running the teacher) is `kdbench.cache.capture`'s job; this module only
writes, verifies and reads the files.

Layout of a cache directory::

    manifest.json              identity (teacher, tokenizer, tokens, capture settings), shapes, sha256 per file
    fidelity.json              bytes per token per component, KL(full || top-k reconstruction), tail mass,
                               the stored hidden states' error against float32
    00000.input_ids.npy        (S, T)        token ids: uint8, uint16, or uint24 as (S, T, 3) uint8 little-endian
    00000.topk_logprobs.npy    (S, T, k)     teacher log-probs of the next token, float16
    00000.topk_ids.npy         (S, T, k)     their ids, as input_ids
    00000.tail_logprob.npy     (S, T)        log of the mass outside the top-k, float32
    00000.hidden.npy           (S, L, T, D)  mapped layers' outputs, bfloat16 stored as uint16 (or float16, or int8)
    00000.hidden_scale.npy     (S, L, T)     with int8 hidden states: the scale per token and layer, float32
    hidden.basis.npy           (L, 1 + r, D) with `cache.layer_rank` r: each layer's mean and r principal directions,
                               float32; every layered component is then r int8 coefficients per token and layer
                               plus its `<component>_scale` (`kdbench.cache.compact`)
    00000.attention_qk.npy     (S, L, T, (H + G) hd) optional, float16: queries and keys, maps derived on read
    00000.qkv.npy              (S, L, T, (H + 2G) hd) optional, float16: queries, keys and values

q/k/v are what the attention received (after rotary embeddings; G key/value heads, not repeated to
the H query heads); `attention_heads` in the manifest gives H, G, hd and the scale of q k^T.

Plain `.npy` files load without pickle or code execution and memory-map, so a batch is a
few slices. Shards are built in a work directory and kept across interruptions: a restarted
job resumes at the first missing shard when the identity still matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import shutil
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdbench import KdbenchError
from kdbench.cache.compact import decode
from kdbench.models import attention
from kdbench.models.attention import Heads
from kdbench.io import DirectWriter, atomic_path, read_json, sha256_file, write_json
from kdbench.losses import Targets
from kdbench.schema.plan import id_bytes

FORMAT = "kdbench-cache/7"  # 3: packed causal attentions; 4: vocabulary_sha256, vocab_size and top_k in the identity;
# 5: a crc32 per file beside its sha256, checked by every reader on first read; 6: q/k instead of attention maps,
# q/k/v as the attention received them (after rotary embeddings, kv heads not repeated), float16; ids of
# vocabularies above 65,536 in 24 bits (uint24); int8 hidden states with hidden_scale; 7: compact layer targets
# (int8 coefficients in per-layer bases, `<component>.basis.npy`, identity key `bases`)
_STAGING_BYTES = 4 << 20  # per component: direct writes of 4 MiB
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int8": torch.int8}


def _storage(arr_dtype: str) -> np.dtype:
    """bfloat16 and uint24 have no numpy dtype: store bfloat16's bits as uint16, uint24's bytes as uint8."""
    return np.dtype({"bfloat16": np.uint16, "uint24": np.uint8}.get(arr_dtype, arr_dtype))


def pack_uint24(ids: np.ndarray) -> np.ndarray:
    """Ids below 2^24 -> their three low bytes, little-endian: a uint8 array with a trailing axis of 3."""
    return np.ascontiguousarray(np.ascontiguousarray(ids, "<u4").view(np.uint8).reshape(*np.shape(ids), 4)[..., :3])


def unpack_uint24(packed: np.ndarray) -> np.ndarray:
    """`pack_uint24`'s bytes -> the ids, int64."""
    b = packed.astype(np.int64)
    return b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16


def stored_ids(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, str]:
    """Token ids as the cache stores them: the narrowest of uint8, uint16 and uint24 that holds the vocabulary."""
    n = id_bytes(vocab_size)
    return (pack_uint24(ids), "uint24") if n == 3 else (ids.astype(f"uint{8 * n}", copy=False), f"uint{8 * n}")


def stored(t: torch.Tensor, dtype: str) -> tuple[np.ndarray, str]:
    """A tensor as the cache stores it in `dtype`: (array, dtype name)."""
    t = t.detach().to(TORCH_DTYPES[dtype]).cpu()
    return (t.view(torch.uint16) if dtype == "bfloat16" else t).numpy(), dtype


def converted(parts: dict[str, torch.Tensor], device: str, bases: dict[str, torch.Tensor] | None = None
              ) -> dict[str, torch.Tensor]:
    """Components in their stored dtypes (bfloat16 as such) -> on `device`, ids as int64 and the rest float32;
    int8 components come with their `<name>_scale`: times it, or decoded in their basis (`compact.decode`)."""
    out = {name: (t.long() if name in ("input_ids", "topk_ids") else t.float()).to(device, non_blocking=True)
           for name, t in parts.items()}
    for name in [n for n in out if f"{n}_scale" in out]:
        scale = out.pop(f"{name}_scale")
        basis = (bases or {}).get(name)
        out[name] = out[name] * scale[..., None] if basis is None else decode(out[name], scale, basis.to(device))
    return out


def to_targets(parts: dict[str, torch.Tensor], heads: Heads | None, device: str,
               bases: dict[str, torch.Tensor] | None = None) -> Targets:
    """Stored components -> a training batch (`converted`), attention maps and q/k/v vectors derived from the
    stored q/k(/v). The reader and the online teacher share it, so both give the same targets."""
    out = converted(parts, device, bases)
    if "attention_qk" in out:
        out["attentions"] = attention.stored_maps(out.pop("attention_qk"), heads)
    if "qkv" in out:
        out["qkv"] = attention.vectors(*attention.unpack(out["qkv"], heads, "qkv"))
    return Targets(**out)


def _to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(unpack_uint24(a) if dtype == "uint24" else a))
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def _npy_bytes(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, arr, allow_pickle=False)
    return buffer.getvalue()


def write_cache(batches: Callable[[int, int], dict[str, tuple[np.ndarray, str]]], n_seqs: int, seq_len: int,
                shard_seqs: int, batch_size: int, identity: dict, fidelity: dict, out_dir: Path, work_dir: Path,
                bases: dict[str, np.ndarray] | None = None) -> dict:
    """Write the cache of `n_seqs` sequences into `out_dir`; returns its manifest.

    `batches(start, stop)` gives the arrays of sequences start..stop-1 as {component: (array, stored
    dtype)}. `identity` holds what makes a cache valid for a consumer (teacher, tokenizer, tokens,
    capture settings); `fidelity` is stored as fidelity.json with the bytes per token; `bases` (compact
    layer targets) go to `<component>.basis.npy`, their sizes and checksums into the identity's `bases`,
    so shards encoded in other bases are never resumed. Shards accumulate in `work_dir`, which a rerun
    with the same identity resumes; on success it is renamed to `out_dir`.
    """
    blobs = {name: _npy_bytes(np.ascontiguousarray(arr, np.float32)) for name, arr in (bases or {}).items()}
    identity = {**identity, "bases": {
        name: {"file": f"{name}.basis.npy", "shape": list(bases[name].shape), "dtype": "float32", "bytes": len(blob),
               "sha256": hashlib.sha256(blob).hexdigest(), "crc32": zlib.crc32(blob)} for name, blob in blobs.items()}}
    identity = json.loads(json.dumps(identity))  # as it reads back from disk
    work_dir = Path(work_dir)
    if work_dir.exists() and (not (work_dir / "identity.json").exists() or read_json(work_dir / "identity.json") != identity):
        shutil.rmtree(work_dir)
    for name, blob in blobs.items():
        with atomic_path(work_dir / f"{name}.basis.npy") as tmp:
            tmp.write_bytes(blob)
    write_json(work_dir / "identity.json", identity)
    shards, staging = [], {}
    started, done_tokens = time.perf_counter(), 0
    with ThreadPoolExecutor(max_workers=1) as pool:  # writes (in order) overlap the next batches
        try:
            in_flight: deque = deque()
            for index, start in enumerate(range(0, n_seqs, shard_seqs)):
                stop = min(start + shard_seqs, n_seqs)
                meta_path = work_dir / f"{index:05d}.json"
                if meta_path.exists():
                    shards.append(pool.submit(read_json, meta_path))
                    continue
                writer = _ShardWriter(work_dir, index, start, stop - start, staging)
                for b in range(start, stop, batch_size):
                    in_flight.append(pool.submit(writer.add, batches(b, min(b + batch_size, stop))))
                    while len(in_flight) > 2:  # bounds memory; a write error (e.g. a full disk) surfaces here
                        in_flight.popleft().result()
                shards.append(pool.submit(writer.finish))
                in_flight.append(shards[-1])
                done_tokens += (stop - start) * seq_len
                rate = done_tokens / (time.perf_counter() - started)
                print(f"cache: shard {index} seqs {stop}/{n_seqs} {rate:,.0f} tok/s", flush=True)
            shards = [f.result() for f in shards]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # no later shard completes after a failed one
            raise
    shards.sort(key=lambda s: s["index"])
    manifest = {"format": FORMAT, **identity, "n_seqs": n_seqs, "seq_len": seq_len, "shards": shards,
                "bytes_per_token": _bytes_per_token(shards, n_seqs * seq_len)}
    write_json(work_dir / "manifest.json", manifest)
    write_json(work_dir / "fidelity.json", {**fidelity, "bytes_per_token": manifest["bytes_per_token"]})
    (work_dir / "identity.json").unlink()
    if Path(out_dir).exists():
        shutil.rmtree(out_dir)
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    work_dir.rename(out_dir)
    return manifest


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
            f["crc32"] = zlib.crc32(data, f["crc32"])
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
        return {"path": path, "handle": handle, "hash": hashlib.sha256(header.getvalue()),
                "crc32": zlib.crc32(header.getvalue()), "rows": 0,
                "shape": [self.n_seqs, *arr.shape[1:]], "dtype": dtype}

    def finish(self) -> dict:
        for f in self._files.values():
            f["handle"].close()
            if f["rows"] != self.n_seqs:
                raise KdbenchError(f"cache shard {self.index:05d}: {f['path'].name} got {f['rows']} of {self.n_seqs} rows")
        self._stack.close()  # fsync and rename every file
        files = {name: {"file": f["path"].name, "shape": f["shape"], "dtype": f["dtype"],
                        "bytes": f["path"].stat().st_size, "sha256": f["hash"].hexdigest(),
                        "crc32": f["crc32"]}
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
    """Read side: checks the manifest on open, memory-maps shards, serves `Targets` batches.

    Each shard file is checked against its crc32 the first time a batch reads from it (a flipped
    byte is refused, naming the file, before it trains anything); `verify=True` checks every
    file's sha256 on open instead.
    """

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
        self._checked: set[tuple[int, str]] = set()  # (shard, component) files whose crc32 matched
        self._arrays: list[dict[str, np.ndarray]] = []
        for shard in m["shards"]:
            arrays = {}
            for name, f in shard["files"].items():
                arrays[name] = self._open(shard, name, f, verify)
            self._arrays.append(arrays)
        self.components = tuple(self._arrays[0]) if self._arrays else ()
        self._dtypes = {name: f["dtype"] for name, f in m["shards"][0]["files"].items()} if m["shards"] else {}
        self._heads = Heads(**m["attention_heads"]) if m.get("attention_heads") else None
        self.bases = {name: torch.from_numpy(self._basis(f, verify)) for name, f in m.get("bases", {}).items()}

    def _basis(self, f: dict, verify: bool) -> np.ndarray:
        """A compact component's basis, refused unless its size, crc32 (and with `verify` its sha256) match."""
        path, where = self.path / f["file"], f"cache {self.path} ({f['file']})"
        if not path.exists() or path.stat().st_size != f["bytes"]:
            raise KdbenchError(f"{where}: basis file missing or not {f['bytes']} bytes; rerun cache_teacher")
        blob = path.read_bytes()
        if zlib.crc32(blob) != f["crc32"] or (verify and hashlib.sha256(blob).hexdigest() != f["sha256"]):
            raise KdbenchError(f"{where}: checksum mismatch, the basis file is corrupt; rerun cache_teacher")
        arr = np.load(io.BytesIO(blob), allow_pickle=False)
        if list(arr.shape) != f["shape"] or arr.dtype != np.float32:
            raise KdbenchError(f"{where}: shape/dtype {arr.shape}/{arr.dtype} differ from the manifest")
        return arr

    def _open(self, shard: dict, name: str, f: dict, verify: bool) -> np.ndarray:
        path = self.path / f["file"]
        where = f"cache shard {shard['index']:05d} ({f['file']})"
        if not path.exists():
            raise KdbenchError(f"{where}: file missing")
        if path.stat().st_size != f["bytes"]:
            raise KdbenchError(f"{where}: size {path.stat().st_size} bytes, manifest says {f['bytes']}")
        if verify and sha256_file(path) != f["sha256"]:
            raise KdbenchError(f"{where}: sha256 mismatch, the file is corrupt or was replaced")
        if verify:
            self._checked.add((shard["index"], name))
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
        for s in set(shard.tolist()):
            if (s, name) not in self._checked:
                self.check_crc32(s, name)
        local = idx - self._starts[shard]
        first = self._arrays[0][name]
        out = np.empty((len(idx), *first.shape[1:]), first.dtype)
        for row, (s, i) in enumerate(zip(shard.tolist(), local.tolist())):
            out[row] = self._arrays[s][name][i]
        return out

    def check_crc32(self, index: int, name: str) -> None:
        """Refuse shard `index`'s file of component `name` unless its bytes match the manifest's crc32."""
        f = self.manifest["shards"][index]["files"][name]
        crc = 0
        with open(self.path / f["file"], "rb", buffering=0) as fh:
            while chunk := fh.read(_STAGING_BYTES):
                crc = zlib.crc32(chunk, crc)
        if crc != f["crc32"]:
            raise KdbenchError(f"cache shard {index:05d} ({f['file']}): crc32 mismatch on first read, the file is "
                               "corrupt; rerun cache_teacher")
        self._checked.add((index, name))

    def batch(self, idx: np.ndarray, device: str = "cpu") -> Targets:
        """The `Targets` for sequences `idx` (`to_targets`); int8 components are read with their scales."""
        names = self.components + tuple(f"{c}_scale" for c in self.components if f"{c}_scale" in self._dtypes)
        return to_targets({name: _to_torch(self.gather(name, idx), self._dtypes[name]) for name in names},
                          self._heads, device, self.bases)


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 24 else s[:20] + "...'"


