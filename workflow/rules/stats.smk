rule aggregate:
    input:
        evals=expand(f"{R}/eval/{{model}}/results.json", model=MODELS),
        models=[f"{R}/{m}" for m in MODELS],
    output:
        summary=f"{R}/summary.csv",
        table=report(f"{R}/table.md", caption="../report/table.rst", category="Tables"),
        table_csv=f"{R}/table.csv",
        table_tex=f"{R}/table.tex",
        comparison=report(f"{R}/comparison.md", caption="../report/comparison.rst", category="Tables"),
        comparison_csv=f"{R}/comparison.csv",
        comparison_tex=f"{R}/comparison.tex",
        headline=f"{R}/headline.txt",
        accuracy=report(f"{R}/figures/accuracy.png", caption="../report/accuracy.rst", category="Figures"),
        paired=report(f"{R}/figures/paired.png", caption="../report/paired.rst", category="Figures"),
        curves=report(f"{R}/figures/curves.png", caption="../report/curves.rst", category="Figures"),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCH}/aggregate.tsv"
    params:
        stats=config["stats"],
        models=MODELS,
        out=R,
    script:
        "../scripts/aggregate.py"
