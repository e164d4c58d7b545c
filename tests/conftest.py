"""Shared fixtures: offline Hugging Face settings and tiny local models/tokenizers."""
from __future__ import annotations

import os
from dataclasses import dataclass
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
    from kdbench.schema.config import TokenizerConfig
    from kdbench.data.tokenizer import train_tokenizer

    texts = [f"Person{i} lives in City{i % 5}. Person{i} has a cat." for i in range(200)]
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1), out)
    return out


SMOKE = REPO / "config" / "presets" / "smoke.yaml"


def flip_byte(path: Path, at: int, mask: int = 0x01) -> None:
    """Corrupt one byte of `path` in place (same size: only a content hash can tell)."""
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 1800):
    """Run the repository's Snakefile with `cwd` as working directory (results land there)."""
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("snakemake"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([exe, "--snakefile", str(REPO / "Snakefile"), "--directory", str(cwd), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


@dataclass(frozen=True)
class SmokeRun:
    results: Path       # <tmp>/results/smoke
    code_changed: bool  # the working tree was edited while it ran, so its records differ in code version


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """The smoke preset end to end through snakemake, once per test session (a few minutes on 2 cores)."""
    from kdbench.provenance import code_version

    root = tmp_path_factory.mktemp("smoke")
    before = code_version.__wrapped__()
    out = snakemake("--cores", "2", "--configfile", str(SMOKE), cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return SmokeRun(root / "results" / "smoke", code_version.__wrapped__() != before)
