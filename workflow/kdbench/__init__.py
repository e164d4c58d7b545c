"""kdbench: a reproducible benchmark of knowledge-distillation losses for language models."""

__version__ = "0.1.0"


class KdbenchError(RuntimeError):
    """An error the user can act on; reported as one line without a traceback."""
