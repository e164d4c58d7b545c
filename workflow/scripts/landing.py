"""Snakemake job: the HTML pieces of the report's landing page (headline, main table, forest plot, why paragraph)."""
from kdbench.analysis.landing import write_landing
from kdbench.snake import run_job

i, o = snakemake.input, snakemake.output
why = {"why": (i.why[0], o.why)} if i.why else {}
run_job(snakemake, lambda: write_landing(i.headline, i.table, i.paired,
                                         {"headline": o.headline, "table": o.table, "paired": o.paired}, **why))
