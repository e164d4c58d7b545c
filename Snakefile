# kdbench: does matching intermediate layers (Experiment 2) beat logit-only distillation (Experiment 1)
# on unseen tasks? One DAG: data -> teacher -> teacher cache -> students (arms x seeds) -> lm-eval -> statistics.
#   snakemake --cores all                                          the default experiment
#   snakemake --cores all --configfile config/presets/smoke.yaml   the same DAG at micro sizes
import sys

from snakemake.utils import min_version

from kdbench.schema.checks import check_config_files

min_version("9.0")
check_config_files([f"{workflow.basedir}/config/config.yaml"])  # malformed YAML: named with file and line


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


# Outputs of a finished run that were deleted: Snakemake would leave them gone while what reads them is
# up to date; asked for here, they are rebuilt, and what reads them is then rerun as out of date
# (rule paper's folder only on request, as it was made).
REBUILT = [p for p in LOST if any(r.is_producer(p) for r in workflow.rules if r.name != "paper")]
if REBUILT:
    print(f"kdbench: rebuilding {len(REBUILT)} deleted output(s) of {R}, e.g. {REBUILT[0]}", file=sys.stderr)


rule all:
    input:
        rules.aggregate.output,
        rules.landing.output,
        rules.analyze.output if ANALYSIS else [],
        REBUILT,
    default_target: True
