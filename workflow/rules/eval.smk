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
        models=f"{R}/{{model}}",
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


if CURVE_ARMS:

    rule evaluate_curve:
        """Every branch of one curve run (train_curve's outputs) in one process: lm-eval's start-up, most of an
        evaluation of a small model, is paid once per run instead of once per budget."""
        input:
            models=[f"{R}/{m}" for m in BRANCH_MODELS],
            tasks=rendered_tasks,
        output:
            [f"{R}/eval/{m}/results.json" for m in BRANCH_MODELS],
        wildcard_constraints:
            arm=one_of(CURVE_ARMS),
        conda:
            ENV
        log:
            f"{LOGS}/evaluate_curve/{{arm}}/seed{{seed}}.log",
        benchmark:
            f"{BENCH}/evaluate_curve/{{arm}}/seed{{seed}}.tsv"
        params:
            evaluation=config["evaluation"],
            store="results/.eval_store",
        threads: 1
        resources:
            gpu=GPUS,
        script:
            "../scripts/evaluate_model.py"

    ruleorder: evaluate_curve > evaluate_model
