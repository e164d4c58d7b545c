"""Probes of trained models on held-out text: KL(teacher || student) and linear CKA of every layer pair.

One forward pass of the teacher and of each model over the first `n_seqs` validation sequences
(never the task suite, never training data). Per model:

- KL(teacher || student) per token, in nats, over the tokenizer's ids, as distillation reads them
  (embedding rows padded past the tokenizer, in either model, are cut off);
- linear CKA (`kdbench.analysis.cka`) between every student layer and every teacher layer, token
  positions as examples; layer 0 is the embedding output, layer l the output of block l (the
  numbering of the layer maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from kdbench.analysis.cka import cka_matrix
from kdbench.data.tokens import load_tokens
from kdbench.io import atomic_path
from kdbench.models.causal_lm import load_model, load_tokenizer

KL_COLUMNS = ["model", "arm", "seed", "kl", "n_tokens"]
CKA_COLUMNS = ["model", "arm", "seed", "student_layer", "teacher_layer", "cka"]


@torch.no_grad()
def _outputs(model_dir: Path, ids: torch.Tensor, batch_size: int, vocab: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """(log-probs (N, T, vocab) over the first `vocab` logits, float32; per layer (N*T, D) float64 hidden states)."""
    model = load_model(model_dir).eval()
    logps, hidden = [], []
    for start in range(0, len(ids), batch_size):
        out = model(input_ids=ids[start:start + batch_size], output_hidden_states=True, use_cache=False)
        logps.append(torch.log_softmax(out.logits[..., :vocab].float(), dim=-1))
        hidden.append([h.float().flatten(0, 1).numpy().astype(np.float64) for h in out.hidden_states])
    return torch.cat(logps), [np.concatenate(layer) for layer in zip(*hidden)]


def probe(teacher_dir: Path, models: Mapping[str, tuple[str, int]], val_path: Path, n_seqs: int,
          batch_size: int = 16, cka: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """KL and CKA frames for `models` (model folder -> (arm, seed)) against the teacher."""
    tokens = load_tokens(val_path)[:n_seqs]
    ids = torch.from_numpy(tokens.astype(np.int64))
    vocab = len(load_tokenizer(teacher_dir))
    t_logp, t_hidden = _outputs(teacher_dir, ids, batch_size, vocab)
    t_p = t_logp.exp()
    t_entropy = (t_p * t_logp).sum(-1)  # -H(teacher) per position
    kl_rows, cka_rows = [], []
    for model_dir, (arm, seed) in models.items():
        s_logp, s_hidden = _outputs(Path(model_dir), ids, batch_size, vocab)
        kl = t_entropy - (t_p * s_logp).sum(-1)
        kl_rows.append([str(model_dir), arm, seed, float(kl.mean()), int(kl.numel())])
        if cka:
            grid = cka_matrix(s_hidden, t_hidden)
            cka_rows += [[str(model_dir), arm, seed, i, j, float(grid[i, j])]
                         for i in range(grid.shape[0]) for j in range(grid.shape[1])]
    return pd.DataFrame(kl_rows, columns=KL_COLUMNS), pd.DataFrame(cka_rows, columns=CKA_COLUMNS)


def write_probes(teacher_dir: Path, models: Mapping[str, tuple[str, int]], val_path: Path, n_seqs: int,
                 kl_path: Path, cka_path: Path, cka: bool = True) -> None:
    kl, grid = probe(teacher_dir, models, val_path, n_seqs, cka=cka)
    for frame, path in ((kl, kl_path), (grid, cka_path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(path)) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
