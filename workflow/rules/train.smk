rule init_student:
    input:
        tokenizer=f"{R}/tokenizer",
        info=f"{R}/data/data.json",
        teacher=f"{R}/teacher",  # teacher_layers copies its embeddings and blocks
    output:
        directory(f"{R}/students/init/seed{{seed}}"),
    conda:
        ENV
    log:
        f"{LOGS}/init_student/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/init_student/seed{{seed}}.tsv"
    params:
        student=student_section(),
    script:
        "../scripts/init_student.py"


if EXP.tuning.enabled:

    rule tune_arm:
        input:
            init=f"{R}/students/init/seed{EXP.tuning.seed}",
            cache=TEACHER_TARGETS,
            val=f"{R}/data/val.npy",
            tasks=lambda w: rendered_tasks(w) if f"{R}/tuning/{w.arm}" in SENSITIVITY else [],
            train=ONLINE_INPUTS,
        output:
            directory(f"{R}/tuning/{{arm}}"),
        conda:
            ENV
        log:
            f"{LOGS}/tune_arm/{{arm}}.log",
        benchmark:
            f"{BENCH}/tune_arm/{{arm}}.tsv"
        params:
            arm=lambda w: config["arms"][w.arm],
            train=config["student"]["train"],
            tuning=config.get("tuning", {}),
            score=lambda w: f"{R}/tuning/{w.arm}" in SENSITIVITY,  # the headline pair, with tuning.sensitivity
            evaluation=lambda w: config["evaluation"] if f"{R}/tuning/{w.arm}" in SENSITIVITY else {},
            work=lambda w: f"{WORK}/tuning/{w.arm}",
            online=ONLINE_SPEC,
        threads: 1
        resources:
            gpu=GPUS,
        script:
            "../scripts/tune_arm.py"


rule train_student:
    input:
        init=f"{R}/students/init/seed{{seed}}",
        cache=student_cache,
        teacher=student_teacher,
        val=f"{R}/data/val.npy",
        train=ONLINE_INPUTS,
        tuned=tuned,
    output:
        directory(f"{R}/students/{{arm}}/seed{{seed}}"),
    wildcard_constraints:
        arm=one_of(MAIN_ARMS),  # the curve arms' main students are branches of train_curve where merged_main
    conda:
        ENV
    log:
        f"{LOGS}/train_student/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train_student/{{arm}}/seed{{seed}}.tsv"
    params:
        arm=lambda w: config["arms"][base_arm(w.arm)],
        train=config["student"]["train"],
        work=lambda w: f"{WORK}/students/{w.arm}/seed{w.seed}",
        online=ONLINE_SPEC,
        budgets=[EXP.student.train.tokens] if CURVE_ARMS else [],  # branched curves' schedule: a one-branch run
        decay=EXP.analysis.decay,
    threads: 1
    resources:
        gpu=GPUS,
    script:
        "../scripts/train_student.py"
