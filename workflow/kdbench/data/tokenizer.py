"""A small byte-level BPE tokenizer trained on the world corpus.

The synthetic world has a tiny vocabulary, so a ~1K-token BPE turns every name and
attribute value into one token with its leading space (" Paris"), which keeps
multiple-choice answers single-token and the embedding tables small. It is saved in
the Hugging Face format so `AutoTokenizer` and lm-eval load it offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from kdbench.schema.config import TokenizerConfig
from kdbench.io import atomic_dir

EOS = "<|endoftext|>"


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
    with atomic_dir(out_dir) as tmp:
        fast.save_pretrained(tmp)
