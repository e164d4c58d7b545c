"""A small byte-level BPE tokenizer trained on the world corpus.

The synthetic world has a tiny vocabulary, so a ~1K-token BPE turns every name and
attribute value into one token with its leading space (" Paris"), which keeps
multiple-choice answers single-token and the embedding tables small. It is saved in
the Hugging Face format so `AutoTokenizer` and lm-eval load it offline.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from kdbench import KdbenchError

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 1024  # small world vocabulary; BPE may stop below this
    min_frequency: int = 2  # a pair seen once is noise, not vocabulary

    def __post_init__(self) -> None:
        floor = len(pre_tokenizers.ByteLevel.alphabet()) + 1
        if self.vocab_size < floor:
            raise KdbenchError(f"vocab_size={self.vocab_size} is too small; allowed: >= {floor} (256 bytes + {EOS})")
        if self.min_frequency < 1:
            raise KdbenchError(f"min_frequency={self.min_frequency} must be at least 1")


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path) -> None:
    """Train GPT-2-style byte-level BPE on `texts` and save it as a Hugging Face tokenizer in `out_dir`.

    EOS is the only special token and doubles as bos/pad/unk, as in GPT-2. The folder is
    written under a temporary name and renamed, so a crash never leaves a partial tokenizer.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fast.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
