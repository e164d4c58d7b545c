"""Checks the world tokenizer: lossless round trip, offline loading, determinism, single-token names.

Trains on a small generated world (the corpus type it is made for) and loads the result with
`transformers.AutoTokenizer`, as the training and lm-eval stages do.
Run: .venv/bin/python -m pytest tests/test_tokenizer.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kdbench import KdbenchError
from kdbench.schema.config import build, TokenizerConfig, WorldConfig
from kdbench.io import sha256_dir
from kdbench.data.tokenizer import EOS, train_tokenizer
from kdbench.data.world import generate_world

_TRAIN = ("import json, sys; from pathlib import Path; from kdbench.data.tokenizer import TokenizerConfig, train_tokenizer; "
          "texts = [json.loads(l)['text'] for l in open(sys.argv[1])]; "
          "train_tokenizer(texts, TokenizerConfig(), Path(sys.argv[2]))")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(n_docs=4000, items_per_task=20), root)
    return root


@pytest.fixture(scope="module")
def texts(world) -> list[str]:
    return [json.loads(line)["text"] for line in (world / "corpus.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, texts) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(texts, TokenizerConfig(), out)
    return out


def test_autotokenizer_loads_with_eos_and_pad(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert tok.eos_token == tok.pad_token == tok.bos_token == EOS
    assert tok.eos_token_id == tok.pad_token_id == tok.convert_tokens_to_ids(EOS)
    assert 256 < len(tok) <= TokenizerConfig().vocab_size
    assert tok("Q: Where")["input_ids"] == tok.encode("Q: Where")  # no special tokens are added
    assert EOS not in tok.decode(tok.encode("Alice lives in Paris."))


def test_round_trip_is_lossless(tok_dir, texts):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    samples = texts[:200] + ["  two  spaces\n\nand tabs\t", "unseen bytes: café, 東京, ✓", "Q: Where?\nA:"]
    for text in samples:
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(" ".join(texts[:100]))) < len(" ".join(texts[:100]).encode()) / 3  # BPE merged a lot


def test_world_words_are_single_tokens_with_leading_space(tok_dir, world):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    facts = json.loads((world / "world.json").read_text())
    words = list(facts["people"]) + [v for values in facts["attributes"].values() for v in values]
    split = [w for w in words if len(tok.encode(f" {w}")) != 1]
    assert split == []
    assert len(tok.encode("Zyxwv")) > 1  # not everything is one token


def test_training_is_deterministic_across_processes(tmp_path, tok_dir, world):
    subprocess.run([sys.executable, "-c", _TRAIN, str(world / "corpus.jsonl"), str(tmp_path / "again")], check=True)
    assert sha256_dir(tmp_path / "again") == sha256_dir(tok_dir)


def test_retraining_replaces_the_folder(tmp_path, texts):
    out = tmp_path / "tok"
    train_tokenizer(["aaaa bbbb"] * 10, TokenizerConfig(), out)
    small = len(AutoTokenizer.from_pretrained(out))
    train_tokenizer(texts, TokenizerConfig(), out)
    assert len(AutoTokenizer.from_pretrained(out)) > small
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp folders left behind


@pytest.mark.parametrize("mapping, key", [({"vocab_size": 100}, "vocab_size"), ({"min_frequency": 0}, "min_frequency"),
                                          ({"vocab": 10}, "vocab")])
def test_bad_config_names_the_key(mapping, key):
    with pytest.raises(KdbenchError, match=key):
        build(TokenizerConfig, mapping, "tokenizer")
