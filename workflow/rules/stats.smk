rule aggregate:
    input:
        evals=expand(f"{R}/eval/{{model}}/results.json", model=MODELS),
        models=[f"{R}/{m}" for m in MODELS],
        tuning=SENSITIVITY,
        budget_evals=expand(f"{R}/eval/{{model}}/results.json", model=BUDGET_ONLY),  # the headline's budget clause
        budget_models=[f"{R}/{m}" for m in BUDGET_ONLY],
    output:
        summary=f"{R}/summary.csv",
        table=report(f"{R}/table.md", caption="../report/table.rst", category="Answer"),
        table_csv=f"{R}/table.csv",
        table_tex=f"{R}/table.tex",
        comparison=report(f"{R}/comparison.md", caption="../report/comparison.rst", category="Tables"),
        comparison_csv=f"{R}/comparison.csv",
        comparison_tex=f"{R}/comparison.tex",
        headline=report(f"{R}/headline.txt", caption="../report/headline.rst", category="Answer"),
        accuracy=report(f"{R}/figures/accuracy.png", caption="../report/accuracy.rst", category="Figures"),
        paired=report(f"{R}/figures/paired.png", caption="../report/paired.rst", category="Answer"),
        curves=report(f"{R}/figures/curves.png", caption="../report/curves.rst", category="Figures"),
        accuracy_pdf=f"{R}/figures/accuracy.pdf",
        paired_pdf=f"{R}/figures/paired.pdf",
        curves_pdf=f"{R}/figures/curves.pdf",
        **({"sensitivity": f"{R}/sensitivity.csv", "sensitivity_md": f"{R}/sensitivity.md"} if SENSITIVITY else {}),
        **(
            {
                "efficiency": report(f"{R}/efficiency.md", caption="../report/efficiency.rst", category="Answer"),
                "efficiency_csv": f"{R}/efficiency.csv",
                "efficiency_tex": f"{R}/efficiency.tex",
                "learning": report(f"{R}/figures/learning.png", caption="../report/learning.rst", category="Answer"),
                "learning_pdf": f"{R}/figures/learning.pdf",
            }
            if BUDGETS
            else {}
        ),
    conda:
        ENV
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCH}/aggregate.tsv"
    params:
        stats=config["stats"],
        models=MODELS,
        budgets=BUDGET_MODELS,
        results=lambda w, input: str(Path(input.evals[0]).parents[2]),  # results/<experiment>
        out=lambda w, output: str(Path(output.summary).parent),
    script:
        "../scripts/aggregate.py"


rule landing:
    """HTML pieces of the report's landing page (workflow/report/workflow.rst): the answer, from this run's files."""
    input:
        headline=rules.aggregate.output.headline,
        table=rules.aggregate.output.table,
        paired=rules.aggregate.output.paired,
        why=[f"{A}/why.md"] if ANALYSIS else [],
        learning=[f"{R}/figures/learning.png"] if BUDGETS else [],
    output:
        headline=f"{R}/landing/headline.html",
        table=f"{R}/landing/table.html",
        paired=f"{R}/landing/paired.html",
        **({"why": f"{R}/landing/why.html"} if ANALYSIS else {}),
        **({"learning": f"{R}/landing/learning.html"} if BUDGETS else {}),
    conda:
        ENV
    log:
        f"{LOGS}/landing.log",
    benchmark:
        f"{BENCH}/landing.tsv"
    script:
        "../scripts/landing.py"


rule paper:
    """Regenerate every table and figure into results/<experiment>/paper/ from finished evaluations.

    Inputs are `ancient`: timestamps of models and evaluations never trigger retraining here.
    """
    input:
        evals=ancient(expand(f"{R}/eval/{{model}}/results.json", model=MODELS)),
        models=ancient([f"{R}/{m}" for m in MODELS]),
        tuning=ancient(SENSITIVITY),
        budget_evals=ancient(expand(f"{R}/eval/{{model}}/results.json", model=BUDGET_ONLY)),
        budget_models=ancient([f"{R}/{m}" for m in BUDGET_ONLY]),
        # the why analyses (paper/analysis/): control evaluations and the probes' KL and CKA, never recomputed here
        control_evals=ancient(expand(f"{R}/eval/{{model}}/results.json", model=CONTROL_STUDENTS)),
        probes=ancient([f"{A}/probes/kl.csv", f"{A}/probes/cka.csv"] if PROBES else []),
    output:
        directory(f"{R}/paper"),
    conda:
        ENV
    log:
        f"{LOGS}/paper.log",
    benchmark:
        f"{BENCH}/paper.tsv"
    params:
        stats=config["stats"],
        models=MODELS,
        budgets=BUDGET_MODELS,
        results=lambda w, input: str(Path(input.evals[0]).parents[2]),  # results/<experiment>
        out=lambda w, output: output[0],
        analysis=config.get("analysis", {}) if ANALYSIS else None,
        arms=config["arms"],
        controls=CONTROLS,
    script:
        "../scripts/paper.py"
