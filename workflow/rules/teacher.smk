if EXP.trains_teacher:

    rule train_teacher:
        input:
            tokenizer=f"{R}/tokenizer",
            train=f"{R}/data/train.npy",
            val=f"{R}/data/val.npy",
            info=f"{R}/data/data.json",
        output:
            directory(f"{R}/teacher"),
        conda:
            ENV
        log:
            f"{LOGS}/train_teacher.log",
        benchmark:
            f"{BENCH}/train_teacher.tsv"
        params:
            teacher={k: v for k, v in config["teacher"].items() if k != "mode"},  # how students read it is not the teacher's
            work=f"{WORK}/teacher",
        threads: workflow.cores
        priority: 10  # the critical path: everything downstream waits for it
        resources:
            gpu=GPUS,
        script:
            "../scripts/train_teacher.py"

else:

    rule import_teacher:
        output:
            directory(f"{R}/teacher"),
        conda:
            ENV
        log:
            f"{LOGS}/import_teacher.log",
        benchmark:
            f"{BENCH}/import_teacher.tsv"
        params:
            source=config["teacher"]["source"],
            revision=EXP.teacher.revision,  # recorded in the job's provenance
        script:
            "../scripts/import_teacher.py"
