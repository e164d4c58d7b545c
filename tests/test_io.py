"""File helpers: the direct-I/O writer gives back exactly the bytes written, wherever it lands."""

from __future__ import annotations

import errno
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdbench import io as kio

SHM = Path("/dev/shm")


def _write(path: Path, pieces: list[bytes], staging: int) -> None:
    w = kio.DirectWriter(path, kio.DirectWriter.staging(staging))
    for piece in pieces:
        w.write(piece)
    w.close()


@pytest.mark.parametrize("sizes", [[0], [1], [4096], [4095, 2], [9000, 3, 20000, 4096, 1]])
def test_direct_writer_round_trip(tmp_path, sizes):
    """Pieces that cross block and staging-buffer boundaries come back byte for byte, no padding."""
    rng = np.random.default_rng(len(sizes))
    pieces = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    _write(tmp_path / "f", pieces, staging=8192)
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)


@pytest.mark.skipif(not (SHM.is_dir() and hasattr(os, "O_DIRECT")), reason="needs Linux tmpfs at /dev/shm")
def test_direct_writer_on_tmpfs(tmp_path):
    """tmpfs refuses O_DIRECT at open: the writer goes through the page cache instead."""
    path = SHM / f"kdbench-test-{os.getpid()}"
    try:
        _write(path, [b"x" * 5000, b"y" * 3], staging=4096)
        assert path.read_bytes() == b"x" * 5000 + b"y" * 3
    finally:
        path.unlink(missing_ok=True)


def test_direct_writer_falls_back_when_a_write_is_refused(tmp_path, monkeypatch):
    """A filesystem that opens with O_DIRECT but refuses the write (EINVAL) gets buffered writes."""
    real, refused = os.write, []

    def picky(fd, data):
        if getattr(os, "O_DIRECT", 0) and kio.fcntl.fcntl(fd, kio.fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(kio.os, "write", picky)
    _write(tmp_path / "f", [b"a" * 10000], staging=4096)
    assert (tmp_path / "f").read_bytes() == b"a" * 10000
    assert refused == ([4096] if hasattr(os, "O_DIRECT") else [])


def test_direct_writer_reports_a_short_write(tmp_path, monkeypatch):
    """A write that lands only partly (a full disk) raises instead of leaving a short file unnoticed."""
    monkeypatch.setattr(kio.os, "write", lambda fd, data: len(data) // 2)
    with pytest.raises(OSError, match="short write"):
        _write(tmp_path / "f", [b"a" * 8192], staging=4096)



_STEPS = """
import resource, sys, torch
torch.set_num_threads(1)  # one arena: other threads' arenas add faults that vary from run to run
from kdbench.memory import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    sys.exit(3)
from kdbench.schema.config import ArchConfig
from kdbench.models.causal_lm import build_model
model = build_model(ArchConfig(), 1024, 64, 0, seed=0)
ids = torch.randint(1024, (32, 64))
def step():
    model(input_ids=ids).logits.logsumexp(-1).sum().backward()
step()
step()  # a second warm step: the allocator has seen every size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow  # runs training steps in two subprocesses
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keep_freed_memory_cuts_page_faults_of_training_steps():
    """Training steps reuse freed memory instead of faulting fresh pages in (measured on one thread: 3,000-8,000 -> under 500 per step)."""
    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, timeout=300)
        if done.returncode == 3:
            pytest.skip("the C library is not glibc")
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    default, keep = (statistics.median([faults(mode) for _ in range(3)]) for mode in ("default", "keep"))
    assert keep < 0.5 * default or default < 1000  # (huge pages: few faults either way, nothing to cut)


def test_a_failed_writers_late_cleanup_never_removes_a_retrys_file(tmp_path):
    """A writer that failed but whose context closes late (when garbage-collected, as an interrupted cache
    shard's does) must not delete the temporary file of a retry of the same target in the same process."""
    target = tmp_path / "shard.npy"
    failed = kio.atomic_path(target)
    failed.__enter__().write_bytes(b"half")
    with kio.atomic_path(target) as retry:
        retry.write_bytes(b"whole")
        failed.__exit__(KeyboardInterrupt, KeyboardInterrupt("killed"), None)
    assert target.read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == ["shard.npy"]
