rule generate_world:
    output:
        corpus=f"{R}/world/corpus.jsonl",
        suite=directory(f"{R}/world/tasks"),
        facts=f"{R}/world/world.json",
    conda:
        ENV
    log:
        f"{LOGS}/generate_world.log",
    benchmark:
        f"{BENCH}/generate_world.tsv"
    params:
        world=config["world"],
    script:
        "../scripts/generate_world.py"


if EXP.trains_teacher:

    rule train_tokenizer:
        input:
            corpus=corpus_files,
        output:
            directory(f"{R}/tokenizer"),
        conda:
            ENV
        log:
            f"{LOGS}/train_tokenizer.log",
        benchmark:
            f"{BENCH}/train_tokenizer.tsv"
        params:
            tokenizer=config["tokenizer"],
            data=config["data"],
        script:
            "../scripts/train_tokenizer.py"

else:

    rule import_tokenizer:
        output:
            directory(f"{R}/tokenizer"),
        conda:
            ENV
        log:
            f"{LOGS}/import_tokenizer.log",
        benchmark:
            f"{BENCH}/import_tokenizer.tsv"
        params:
            source=config["teacher"]["source"],
            revision=EXP.teacher.revision,  # recorded in the job's provenance
        script:
            "../scripts/import_tokenizer.py"


rule prepare_data:
    input:
        tokenizer=f"{R}/tokenizer",
        corpus=corpus_files,
    output:
        train=f"{R}/data/train.npy",
        val=f"{R}/data/val.npy",
        info=f"{R}/data/data.json",
    conda:
        ENV
    log:
        f"{LOGS}/prepare_data.log",
    benchmark:
        f"{BENCH}/prepare_data.tsv"
    params:
        data=config["data"],
    script:
        "../scripts/prepare_data.py"
