"""Provenance records: what produced an artifact, from which inputs, with which code.

Every job writes `<first output>.prov.json` holding its rule, params, wildcards, the
sha256 of every input and output, the code version (commit, dirty flag, diff hash),
package versions, device and timing. `kdbench audit` walks these records back.
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

from kdbench.io import sha256_path, write_json

PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "lm_eval", "snakemake", "numpy", "pandas",
            "scipy", "seaborn", "datasets")
RECORD_SUFFIX = ".prov.json"


def fingerprint(*parts: Any) -> str:
    """Stable hash of JSON-able parts (sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def record_path(output: Path) -> Path:
    return Path(str(output).rstrip("/") + RECORD_SUFFIX)


@lru_cache(maxsize=1)
def code_version() -> dict:
    """Git commit of the working tree, whether it is dirty, and a hash of the uncommitted diff."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff_sha256": None}
    diff = git("diff", "HEAD", "--", "workflow", "Snakefile", "envs", "pyproject.toml") or ""
    return {"commit": commit.strip(), "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


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
    return {"python": platform.python_version(), "packages": versions, "cuda": torch.version.cuda if cuda else None,
            "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
            "host": socket.gethostname()}


def hash_files(paths: Mapping[str, Sequence[Path]]) -> dict[str, dict[str, str]]:
    """{name: {path: sha256}} for files and directories (a directory hashes its whole tree)."""
    return {name: {str(p): sha256_path(Path(p)) for p in ps} for name, ps in paths.items()}


def write_record(outputs: Mapping[str, Sequence[Path]], *, rule: str, params: Mapping[str, Any],
                 wildcards: Mapping[str, str], inputs: Mapping[str, Sequence[Path]], started: datetime) -> Path:
    """Write the provenance record of one finished job beside its first output."""
    first = next(p for ps in outputs.values() for p in ps)
    record = {
        "rule": rule, "wildcards": dict(wildcards), "params": dict(params),
        "inputs": hash_files(inputs), "outputs": hash_files(outputs),
        "code": code_version(), "environment": environment(),
        "started": started.isoformat(), "ended": datetime.now(timezone.utc).isoformat(),
    }
    path = record_path(first)
    write_json(path, record)
    return path
