"""Snakemake job: KL(teacher || student) and layer-by-layer linear CKA of every student on validation text."""
from pathlib import Path

from kdbench.analysis.probe import write_probes
from kdbench.snake import run_job

i, o, p = snakemake.input, snakemake.output, snakemake.params


def arm_seed(model: str) -> tuple[str, int]:
    _, arm, seed = model.split("/")  # students/<arm>/seed<N>
    return arm, int(seed[4:])


models = {str(path): arm_seed(m) for path, m in zip(i.models, p.probed)}
run_job(snakemake, lambda: write_probes(Path(i.teacher), models, Path(i.val), p.val_seqs, Path(o.kl), Path(o.cka),
                                        cka=p.cka))
