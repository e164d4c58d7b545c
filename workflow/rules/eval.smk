rule render_tasks:
    input:
        suite=f"{R}/world/tasks",
    output:
        directory(f"{R}/eval/tasks"),
    conda:
        ENV
    log:
        f"{LOGS}/render_tasks.log",
    benchmark:
        f"{BENCH}/render_tasks.tsv"
    script:
        "../scripts/render_tasks.py"


rule evaluate_model:
    input:
        model=f"{R}/{{model}}",
        tasks=rendered_tasks,
    output:
        f"{R}/eval/{{model}}/results.json",
    conda:
        ENV
    log:
        f"{LOGS}/evaluate_model/{{model}}.log",
    benchmark:
        f"{BENCH}/evaluate_model/{{model}}.tsv"
    params:
        evaluation=config["evaluation"],
        store="results/.eval_store",
    threads: 1
    resources:
        gpu=GPUS,
    script:
        "../scripts/evaluate_model.py"
