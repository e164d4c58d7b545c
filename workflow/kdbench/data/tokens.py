"""Corpus loading and token packing: text -> fixed-length token sequences on disk.

Documents are tokenised, joined with EOS and cut into `seq_len` windows, so a batch is
a slice of one (N, T) array and every consumer (teacher, cache, students) sees the same
tokens. Which sequences a job sees, and in what order, is a pure function of a seed
and the step (`batch_indices`), which makes resuming and cross-arm fairness trivial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from kdbench import KdbenchError
from kdbench.schema.config import DataConfig
from kdbench.io import atomic_path, sha256_file, write_json



def read_texts(cfg: DataConfig, path: Path | None = None) -> Iterator[str]:
    """Yield documents from a local .txt (blank-line separated) / .jsonl file or a HF dataset."""
    source = Path(path) if path is not None else Path(cfg.source)
    if source.suffix == ".jsonl" and source.is_file():
        texts = _jsonl_texts(source, cfg.text_field)
    elif source.suffix == ".txt" and source.is_file():
        texts = (d.strip() for d in source.read_text().split("\n\n") if d.strip())
    elif path is None and not source.exists():
        texts = _hf_texts(cfg)
    else:
        raise KdbenchError(f"data.source {str(source)!r}: expected a .txt or .jsonl file or a dataset id")
    for i, text in enumerate(texts):
        if cfg.max_docs is not None and i >= cfg.max_docs:
            return
        yield text


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            if field not in doc:
                raise KdbenchError(f"{path}:{n}: no field {field!r} (data.text_field); fields: {', '.join(doc)}")
            yield doc[field]


def _hf_texts(cfg: DataConfig) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.source, cfg.hf_name, split=cfg.hf_split, streaming=True, revision=cfg.revision)
    except Exception as e:  # the hub raises many types; one line is what the user needs
        raise KdbenchError(f"cannot load dataset {cfg.source!r}: {str(e).splitlines()[0]}") from e
    for doc in ds:
        yield doc[cfg.text_field]


def token_dtype(vocab_size: int) -> np.dtype:
    """Narrowest unsigned integer type that holds every token id."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise KdbenchError(f"vocabulary of {vocab_size} tokens is too large")


def pack(texts: Iterator[str], tokenizer, seq_len: int) -> np.ndarray:
    """Tokenise, join documents with EOS, cut into (N, seq_len); the ragged tail is dropped."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise KdbenchError("tokenizer has no eos token; documents cannot be separated")
    ids: list[int] = []
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == 1024:
            ids.extend(_encode(tokenizer, batch, eos))
            batch = []
    ids.extend(_encode(tokenizer, batch, eos))
    n = len(ids) // seq_len
    if n < 2:
        raise KdbenchError(f"corpus has {len(ids)} tokens: fewer than two sequences of data.seq_len={seq_len}")
    return np.asarray(ids[: n * seq_len], dtype=token_dtype(len(tokenizer))).reshape(n, seq_len)


def _encode(tokenizer, texts: list[str], eos: int) -> Iterator[int]:
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        yield from row
        yield eos


def prepare(texts: Iterator[str], tokenizer, cfg: DataConfig, out_dir: Path) -> dict:
    """Write train.npy / val.npy (N, T) and data.json with counts and hashes."""
    seqs = pack(texts, tokenizer, cfg.seq_len)
    order = np.random.default_rng(cfg.seed).permutation(len(seqs))
    n_val = max(1, int(round(cfg.val_fraction * len(seqs))))
    split = {"val": seqs[np.sort(order[:n_val])], "train": seqs[np.sort(order[n_val:])]}
    info: dict = {"seq_len": cfg.seq_len, "vocab_size": len(tokenizer), "dtype": str(seqs.dtype)}
    for name, arr in split.items():
        path = Path(out_dir) / f"{name}.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
        info[name] = {"n_seqs": len(arr), "n_tokens": int(arr.size), "sha256": sha256_file(path)}
    write_json(Path(out_dir) / "data.json", info)
    return info


def load_tokens(path: Path) -> np.ndarray:
    """Memory-map a token array written by `prepare`."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def batch_indices(n_seqs: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Sequence indices of batch `step`: epochs of seeded permutations, a pure function of its arguments."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_seqs)
        perm = np.random.default_rng([seed, epoch]).permutation(n_seqs)
        out.extend(perm[offset : offset + batch_size - len(out)])
    return np.asarray(out)
