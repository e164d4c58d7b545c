"""Shared fixtures: offline Hugging Face settings and tiny local models/tokenizers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(REPO / ".hf_home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained on a few sentences, saved like the pipeline saves it."""
    from kdbench.tokenizer import TokenizerConfig, train_tokenizer

    texts = [f"Person{i} lives in City{i % 5}. Person{i} has a cat." for i in range(200)]
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1), out)
    return out
