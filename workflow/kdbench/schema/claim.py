"""One run per results folder, made by one config, and nothing of it lost: what the workflow claims when it parses.

`claim` takes a lock of its own on `results/<experiment>/.lock` (flock: the kernel releases it when the
process dies, however it dies) and refuses a folder whose results come from another config, naming
the keys that differ, unless `overwrite` is set; `stamp_config` records the config a run uses.
`lost_outputs` lists the outputs that records say a job wrote and that are gone, so the workflow
can ask for them again (Snakemake alone rebuilds a missing file only when something it needs is
out of date). Parse-time module: stdlib only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from kdbench import KdbenchError
from kdbench.io import read_json, write_json
from kdbench.provenance import RECORD_SUFFIX

LOCK = ".lock"  # holds the holder's PID, host, start time and command line
STAMP = ".config.json"  # the config the folder's results were made with
WORK = ".work"  # resumable state, never a result
NOT_RESULTS = ("overwrite",)  # keys that say how to run, not what the results are
_HELD: dict[Path, int] = {}  # folder -> the descriptor holding its lock, open until the process ends
_ABSENT = object()  # a key one config has and the other lacks


def claim(results: Path, config: Mapping[str, Any], overwrite: bool) -> None:
    """Lock `results` for this process (again: a no-op), then refuse it if its results come from another config."""
    results = Path(results)
    if results not in _HELD:
        _HELD[results] = _lock(results)
    changed = config_changes(results, config)
    if changed and not overwrite:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise KdbenchError(f"experiment: {results}/ holds results of another config ({shown} differ); choose a new "
                           "experiment name, or pass --config overwrite=true to replace them")


def _lock(results: Path) -> int:
    try:
        results.mkdir(parents=True, exist_ok=True)
        if not os.access(results, os.W_OK | os.X_OK):  # the lock file may be writable in a folder that is not
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(results))
        fd = os.open(results / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise KdbenchError(f"{e.filename}: {e.strerror}; make {results}/ writable or choose another experiment "
                           "name") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        raise KdbenchError(f"{results}/ is in use by another run ({holder or 'holder unknown'}); wait for it to end "
                           "or stop it, then run again") from None
    os.ftruncate(fd, 0)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    command = " ".join(sys.argv)[:300]
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()} since {started}: {command}\n".encode(), 0)
    return fd


def config_changes(results: Path, config: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose value differs from the stamp of a folder that holds results (none without both)."""
    stamp = Path(results) / STAMP
    if not stamp.is_file() or not _has_results(Path(results)):
        return []
    old, new = _flat(read_json(stamp)), _flat(_plain(config))
    return sorted(k for k in old.keys() | new.keys() if old.get(k, _ABSENT) != new.get(k, _ABSENT))


def stamp_config(results: Path, config: Mapping[str, Any]) -> None:
    """Record the config a run of `results` uses (written when the run starts its jobs)."""
    write_json(Path(results) / STAMP, _plain(config))


def lost_outputs(results: Path) -> list[str]:
    """Outputs a job's record lists under `results` that no longer exist, in record order."""
    results = Path(results)
    lost = []
    for record in sorted(results.rglob(f"*{RECORD_SUFFIX}")):
        if WORK in record.relative_to(results).parts:
            continue
        try:
            outputs = read_json(record).get("outputs", {})
        except (OSError, ValueError):
            continue  # the audit reports a broken record; the rebuild is of what a record names
        for files in outputs.values():
            lost += [p for p in files if p.startswith(f"{results}/") and not Path(p).exists()]
    return list(dict.fromkeys(lost))


def _has_results(results: Path) -> bool:
    return any(WORK not in r.relative_to(results).parts for r in results.rglob(f"*{RECORD_SUFFIX}"))


def _plain(config: Mapping[str, Any]) -> dict:
    """The config as JSON data, without the keys that do not change results."""
    return {k: v for k, v in json.loads(json.dumps(config, default=str)).items() if k not in NOT_RESULTS}


def _flat(data: Any, where: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{where}.{key}" if where else key).items()}
    return {where: data}
