"""Snakemake job: the HTML pieces of the report's landing page (headline, main table, forest plot)."""
from kdbench.landing import write_landing
from kdbench.snake import run_job

i, o = snakemake.input, snakemake.output
run_job(snakemake, lambda: write_landing(i.headline, i.table, i.paired,
                                         {"headline": o.headline, "table": o.table, "paired": o.paired}))
