"""Snakemake job: the HTML pieces of the report's landing page (headline, learning curves, main table, forest plot, why)."""
from kdbench.analysis.landing import write_landing
from kdbench.snake import run_job

i, o = snakemake.input, snakemake.output
extra = {**({"why": (i.why[0], o.why)} if i.why else {}), **({"learning": (i.learning[0], o.learning)} if i.learning else {})}
run_job(snakemake, lambda: write_landing(i.headline, i.table, i.paired,
                                         {"headline": o.headline, "table": o.table, "paired": o.paired}, **extra))
