rule init_student:
    input:
        tokenizer=f"{R}/tokenizer",
        info=f"{R}/data/data.json",
        teacher=teacher_for_init,
    output:
        directory(f"{R}/students/init/seed{{seed}}"),
    log:
        f"{LOGS}/init_student/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/init_student/seed{{seed}}.tsv"
    params:
        student=student_section(),
    script:
        "../scripts/init_student.py"


rule train_student:
    input:
        init=f"{R}/students/init/seed{{seed}}",
        cache=f"{R}/cache",
        val=f"{R}/data/val.npy",
    output:
        directory(f"{R}/students/{{arm}}/seed{{seed}}"),
    log:
        f"{LOGS}/train_student/{{arm}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train_student/{{arm}}/seed{{seed}}.tsv"
    params:
        arm=lambda w: config["arms"][w.arm],
        train=config["student"]["train"],
        work=lambda w: f"{WORK}/students/{w.arm}/seed{w.seed}",
    threads: 1
    resources:
        gpu=GPUS,
    script:
        "../scripts/train_student.py"
