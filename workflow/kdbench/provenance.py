"""Provenance records: what produced an artifact, from which inputs, with which code.

Every job writes `<first output>.prov.json` holding its rule, params, wildcards, the
job's seed, the sha256 of every input and output (plus the hash of each file inside a
directory output, so an audit can name the file that changed), the code version
(commit, dirty flag, hash of uncommitted and untracked changes), package versions,
device and timing. `kdbench audit` walks these records back (see `kdbench.tools.audit`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from kdbench import KdbenchError
from kdbench.io import digest, read_json, sha256_file, sha256_path, tree_files, tree_hashes, write_json

PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "lm_eval", "snakemake", "numpy", "pandas",
            "scipy", "seaborn", "datasets")
RECORD_SUFFIX = ".prov.json"
CODE_PATHS = ("workflow", "Snakefile", "envs", "pyproject.toml")  # what decides the results


def fingerprint(*parts: Any) -> str:
    """Stable hash of JSON-able parts (sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def record_path(output: Path) -> Path:
    return Path(str(output).rstrip("/") + RECORD_SUFFIX)


@lru_cache(maxsize=1)
def code_version() -> dict:
    """Git commit of the working tree, the hash of its code, whether it is dirty, and a hash of what differs.

    `tree` hashes the committed code paths only (`CODE_PATHS`), so commits that change docs or
    tests leave it alone: that, with the diff hash, is what identifies the code of a run. The diff
    hash covers the diff of tracked files and the content of untracked ones: a new module that
    is not committed yet changes results as much as an edited one.
    """
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "tree": None, "dirty": None, "diff_sha256": None}
    h = hashlib.sha256((git("diff", "HEAD", "--", *CODE_PATHS) or "").encode())
    untracked = (git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS) or "").split()
    for name in sorted(untracked):
        h.update(f"{name}\0{sha256_file(root / name)}\n".encode())
    dirty = h.hexdigest() != hashlib.sha256(b"").hexdigest()
    tree = hashlib.sha256((git("ls-tree", "-r", "HEAD", "--", *CODE_PATHS) or "").encode()).hexdigest()
    return {"commit": commit.strip(), "tree": tree, "dirty": dirty, "diff_sha256": h.hexdigest() if dirty else None}


@lru_cache(maxsize=1)
def environment() -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "packages": versions,
            "cuda": torch.version.cuda if cuda else None,
            "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
            "host": socket.gethostname()}


WEIGHT_GLOBS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


def weights_sha256(model_dir: Path) -> str:
    """Content hash of a saved model's weight files only (curves or logs beside them do not count).

    lm-eval leaves `model_sha` empty for local models; this is the hash every record uses.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise KdbenchError(f"model directory {model_dir} does not exist")
    weights = sorted({p for g in WEIGHT_GLOBS for p in model_dir.glob(g)})
    if not weights:
        raise KdbenchError(f"model directory {model_dir} has no weight files (*.safetensors or pytorch_model*.bin)")
    return digest({f.name: sha256_file(f) for f in weights})


def recorded_hash(path: Path) -> str | None:
    """`path`'s sha256 as its producer's record states it, where that still holds by the file system: the record
    lists exactly the files there now and none is newer than the record (a finished job renames its outputs into
    place before it writes the record); else None. Spares every consumer job a read of a large input (a teacher
    cache of tens of GB); `kdbench audit` rereads everything, and the cache checks its shards' crc32 on first read."""
    record = record_path(path)
    if not record.is_file():
        return None
    written = record.stat().st_mtime_ns
    data = read_json(record)
    if Path(path).is_dir():
        listed, files = data.get("files", {}).get(str(path)), tree_files(path)
        if listed is None or set(listed) != set(files):
            return None
        return digest(listed) if all(f.stat().st_mtime_ns < written for f in files.values()) else None
    hashes = [group[str(path)] for group in data.get("outputs", {}).values() if str(path) in group]
    return hashes[0] if hashes and Path(path).stat().st_mtime_ns < written else None


def input_hashes(paths: Mapping[str, Sequence[Path]]) -> dict[str, dict[str, str]]:
    """{name: {path: sha256}} of a job's inputs (a directory: over its whole tree), each from its producer's
    record where that still holds (`recorded_hash`)."""
    return {name: {str(p): recorded_hash(Path(p)) or sha256_path(Path(p)) for p in ps} for name, ps in paths.items()}


def job_seed(wildcards: Mapping[str, str], params: Mapping[str, Any]) -> int | None:
    """The seed that decides the job's randomness: the `seed` wildcard, else the first `seed` in params."""
    if str(wildcards.get("seed", "")).isdigit():
        return int(wildcards["seed"])
    stack: list[Any] = [params]
    while stack:
        node = stack.pop(0)
        if isinstance(node, Mapping):
            if isinstance(node.get("seed"), int):
                return node["seed"]
            stack.extend(node[k] for k in sorted(node))
    return None


def write_record(outputs: Mapping[str, Sequence[Path]], *, rule: str, params: Mapping[str, Any],
                 wildcards: Mapping[str, str], inputs: Mapping[str, Sequence[Path]], started: datetime,
                 states: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write the provenance record of one finished job beside its first output.

    `states` maps a JSON file among the outputs to what it must say about how it was made
    (e.g. a student's train.json: its arm and training settings); the audit checks it.
    """
    first = next(p for ps in outputs.values() for p in ps)
    files = {str(p): tree_hashes(Path(p)) for ps in outputs.values() for p in ps if Path(p).is_dir()}  # read once
    record = {
        "rule": rule, "wildcards": dict(wildcards), "params": dict(params), "seed": job_seed(wildcards, params),
        "inputs": input_hashes(inputs),
        "outputs": {name: {str(p): digest(files[str(p)]) if str(p) in files else sha256_file(Path(p)) for p in ps}
                    for name, ps in outputs.items()},
        "files": files,
        "states": {str(p): dict(s) for p, s in (states or {}).items()},
        "code": code_version(), "environment": environment(),
        "started": started.isoformat(), "ended": datetime.now(timezone.utc).isoformat(),
    }
    path = record_path(first)
    write_json(path, record)
    return path
