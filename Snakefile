# kdbench: does matching intermediate layers (Experiment 2) beat logit-only distillation (Experiment 1)
# on unseen tasks? One DAG: data -> teacher -> teacher cache -> students (arms x seeds) -> lm-eval -> statistics.
#   snakemake --cores all                                          the default experiment
#   snakemake --cores all --configfile config/presets/smoke.yaml   the same DAG at micro sizes
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/stats.smk"


localrules:
    all,
    paper,
    render_tasks,


rule all:
    input:
        rules.aggregate.output,
    default_target: True
