"""kdbench.data.tokens: corpus readers, packing, dtypes, deterministic splits.

    .venv/bin/python -m pytest tests/test_data.py -v
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from kdbench import KdbenchError
from kdbench.schema.config import DataConfig
from kdbench.data.tokens import load_tokens, pack, prepare, read_texts, token_dtype
from kdbench.models.causal_lm import load_tokenizer


def test_token_dtype_is_narrowest():
    assert token_dtype(256) == np.uint8 and token_dtype(257) == np.uint16
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_readers(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"doc {i}"}) for i in range(5)) + "\n")
    assert list(read_texts(DataConfig(source=str(jsonl), text_field="body", max_docs=3))) == ["doc 0", "doc 1", "doc 2"]
    with pytest.raises(KdbenchError, match=r"c.jsonl:1: no field 'text'"):
        list(read_texts(DataConfig(source=str(jsonl))))
    txt = tmp_path / "c.txt"
    txt.write_text("first para\nline two\n\nsecond\n\n\n")
    assert list(read_texts(DataConfig(source=str(txt)))) == ["first para\nline two", "second"]
    with pytest.raises(KdbenchError, match="expected a .txt or .jsonl"):
        list(read_texts(DataConfig(), tmp_path))


def test_pack_joins_documents_with_eos(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    texts = ["Person1 lives in City1.", "Person2 has a cat."] * 20
    seqs = pack(iter(texts), tok, 8)
    flat = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert seqs.dtype == np.uint16 and seqs.shape == (len(flat) // 8, 8)
    assert seqs.flatten().tolist() == flat[: seqs.size]
    with pytest.raises(KdbenchError, match="fewer than two sequences"):
        pack(iter(["tiny"]), tok, 64)


def test_prepare_is_deterministic_and_disjoint(tmp_path, tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    texts = [f"Person{i} lives in City{i % 5}." for i in range(300)]
    cfg = DataConfig(seq_len=8, val_fraction=0.1)
    a = prepare(iter(texts), tok, cfg, tmp_path / "a")
    b = prepare(iter(texts), tok, cfg, tmp_path / "b")
    assert a == b and a["val"]["n_seqs"] >= 1
    train, val = load_tokens(tmp_path / "a" / "train.npy"), load_tokens(tmp_path / "a" / "val.npy")
    assert len(train) + len(val) == len(pack(iter(texts), tok, 8))
    rows = {r.tobytes() for r in train}
    assert not any(r.tobytes() in rows for r in val) or len(rows) < len(train)
