"""Glue between Snakemake `script:` jobs and the library: logging, errors, threads, provenance."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from kdbench import KdbenchError
from kdbench.memory import keep_freed_memory
from kdbench.provenance import write_record


def _named(files) -> dict[str, list[Path]]:
    """Snakemake's Namedlist -> {name: [paths]}; unnamed entries are keyed by position."""
    owner = {}
    for name, (start, end) in files._names.items():
        for i in range(start, start + 1 if end is None else end):
            owner[i] = name
    out: dict[str, list[Path]] = {}
    for i, f in enumerate(files):
        out.setdefault(owner.get(i, str(i)), []).append(Path(f))
    return out


def _models(inputs: dict[str, list[Path]]) -> list[str]:
    """The model directories among a job's inputs, as "path (model_type)"."""
    out = []
    for path in (p for paths in inputs.values() for p in paths if (p / "config.json").is_file()):
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "unknown type")
        out.append(f"{path} ({model_type})")
    return out


class _PackedSequences(logging.Filter):
    """Drops transformers' advice to pass an attention mask when the input holds the pad token.

    Training sequences are packed documents joined by EOS, which is also the pad token: every
    position is real and attends causally across the joins, so there is nothing to act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "attention_mask" not in record.getMessage()


@contextlib.contextmanager
def _library_logs(log) -> Iterator[None]:
    """Send transformers' log lines to the job's log (its handler holds the original stderr)."""
    import transformers

    logger = transformers.utils.logging.get_logger()  # the library's root logger
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(log) for h in handlers]
    quiet = _PackedSequences()  # on the handler: it sees the records of every transformers module
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h, stream in zip(handlers, streams):
            h.setStream(stream)
            h.removeFilter(quiet)


def os_error(e: OSError) -> str:
    """An I/O error in one line: the path, the reason and its errno name ("results/x: Permission denied (EACCES)")."""
    code = f" ({errno.errorcode[e.errno]})" if e.errno in errno.errorcode else ""
    where = ": ".join(str(f) for f in (e.filename, e.filename2) if f is not None) or "I/O error"
    return f"{where}: {e.strerror or e}{code}; check the path's permissions and free space, then rerun"


def run_job(smk: Any, work: Callable[[], None], states: Mapping[str | Path, Mapping[str, Any]] | None = None) -> None:
    """Run `work` with stdout/stderr in the job's log; one-line errors; provenance on success.

    `states`: what JSON outputs must say about how they were made (see `provenance.write_record`).
    """
    import torch
    import transformers

    keep_freed_memory()
    torch.set_num_threads(max(1, int(smk.threads)))
    transformers.utils.logging.disable_progress_bar()
    started = datetime.now(timezone.utc)
    log_path = Path(smk.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log:
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), _library_logs(log):
                work()
        except (KdbenchError, OSError) as e:
            message = os_error(e) if isinstance(e, OSError) else str(e)
            print(f"error: {message}", file=log)
            print(f"kdbench error in rule {smk.rule}: {message}", file=sys.stderr)
            sys.exit(1)
        except Exception as e:  # inside a library (transformers, torch): the traceback goes to the log, one line out
            traceback.print_exc(file=log)
            models = ", ".join(_models(_named(smk.input))) or "none"
            first = (str(e).strip().splitlines() or [""])[0]
            print(f"kdbench error in rule {smk.rule} (model: {models}): {type(e).__name__}: {first} "
                  f"(traceback in {log_path})", file=sys.stderr)
            sys.exit(1)
    write_record(_named(smk.output), rule=smk.rule, params=dict(smk.params.items()),
                 wildcards=dict(smk.wildcards.items()), inputs=_named(smk.input), started=started, states=states)
