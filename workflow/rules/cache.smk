rule cache_teacher:
    input:
        teacher=f"{R}/teacher",
        train=f"{R}/data/train.npy",
        info=f"{R}/data/data.json",
    output:
        directory(f"{R}/cache"),
    conda:
        ENV
    log:
        f"{LOGS}/cache_teacher.log",
    benchmark:
        f"{BENCH}/cache_teacher.tsv"
    params:
        cache=config["cache"],
        capture=capture_spec(EXP),
        student_layers=student_depth(EXP, PRETRAINED["student"]),
        student_tokens=cached_tokens(EXP),  # the largest budget curve's, when it is larger
        work=f"{WORK}/cache",
    threads: workflow.cores
    priority: 10  # the critical path: every student waits for it
    resources:
        gpu=GPUS,
    script:
        "../scripts/cache_teacher.py"
