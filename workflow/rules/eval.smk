rule render_tasks:
    input:
        suite=f"{R}/world/tasks",
    output:
        directory(f"{R}/eval/tasks"),
    log:
        f"{LOGS}/render_tasks.log",
    benchmark:
        f"{BENCH}/render_tasks.tsv"
    script:
        "../scripts/render_tasks.py"


def rendered_tasks(wildcards):
    return [f"{R}/eval/tasks"] if EXP.synthetic_suite else []


rule evaluate_model:
    input:
        model=f"{R}/{{model}}",
        tasks=rendered_tasks,
    output:
        f"{R}/eval/{{model}}/results.json",
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
