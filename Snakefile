# kdbench: does matching intermediate layers (Experiment 2) beat logit-only distillation (Experiment 1)
# on unseen tasks? One DAG: data -> teacher -> teacher cache -> students (arms x seeds) -> lm-eval -> statistics.
#   snakemake --cores all                                          the default experiment
#   snakemake --cores all --configfile config/presets/smoke.yaml   the same DAG at micro sizes
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"
# The report's landing page leads with the answer: headline, main table and forest plot (rule landing).
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/analysis.smk"


localrules:
    all,
    landing,
    paper,
    render_tasks,


rule all:
    input:
        rules.aggregate.output,
        rules.landing.output,
        rules.analyze.output if ANALYSIS else [],
    default_target: True
