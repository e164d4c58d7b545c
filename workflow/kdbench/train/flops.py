"""Training FLOPs of one job, so budget curves can be read per FLOP as well as per token.

Estimates, stated per component (the usual dense-transformer accounting):

- student: 6 x parameters x tokens (forward 2, backward 4 per parameter per token);
- projector: the same 6 x its parameters x tokens (hidden-state arms);
- loss terms: per token, about 12 V for a term over the output distribution (softmax at the
  temperature, its gradient), 9 x pairs x teacher width for hidden-state MSE, 9 x pairs x heads x T for
  attention KL, 18 x pairs x T x student width for MiniLM relations;
- teacher: its forward (2 x parameters) once per cached token the student read, counted once however
  many epochs reuse it; 0 for arms that never read the teacher. Its parameters are estimated from the
  cache manifest's depth, width and vocabulary (12 L D^2 + V D), which the real teacher's file count
  would only refine.

Pure arithmetic: no torch, so tables and tests read it anywhere.
"""

from __future__ import annotations

from typing import Mapping

def transformer_params(layers: int, width: int, vocab: int) -> int:
    """Parameters of a GPT-style decoder from its shape: 12 L D^2 (attention + 4x MLP) + V D (embeddings)."""
    return 12 * layers * width * width + vocab * width


def training_flops(student_params: int, projector_params: int, tokens: int, reads: Mapping[str, int],
                   vocab: int, seq_len: int, student_width: int, teacher: Mapping[str, int] | None,
                   teacher_tokens: int) -> dict[str, float]:
    """FLOPs of one training job by component and in total.

    `reads`: what the arm's terms read from the teacher -> how many terms or layer pairs read it
    ({"logits": 1, "hidden": 2, ...}). `teacher`: {"layers", "width", "vocab_size", "heads"} or None
    when the arm reads nothing from the teacher. `teacher_tokens`: distinct cached tokens the
    student read (its budget, capped at the cache's size).
    """
    d_t = teacher["width"] if teacher else 0
    per_token_loss = (12 * vocab * reads.get("logits", 0) + 9 * reads.get("hidden", 0) * d_t
                      + 9 * reads.get("attentions", 0) * (teacher or {}).get("heads", 1) * seq_len
                      + 18 * reads.get("qkv", 0) * seq_len * student_width)
    out = {
        "student": 6.0 * student_params * tokens,
        "projector": 6.0 * projector_params * tokens,
        "loss_terms": float(per_token_loss) * tokens,
        "teacher_forward": (2.0 * transformer_params(teacher["layers"], teacher["width"], teacher["vocab_size"])
                            * teacher_tokens) if teacher else 0.0,
    }
    out["total"] = sum(out.values())
    return out
