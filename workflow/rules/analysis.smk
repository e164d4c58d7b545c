# Why the answer falls as it does: random-teacher controls, budget curves, the probes
# (KL and CKA on validation text) and the analysis tables, figures and why.md (kdbench.analysis.explain).
PROBED = [m for m in MODELS if m != "teacher"] + CONTROL_STUDENTS  # every student, floors and controls included


if CONTROLS:

    rule init_random_teacher:
        """The untrained teacher of the controls: the teacher's architecture, initialised from controls.seed."""
        input:
            teacher=f"{R}/teacher",
        output:
            directory(f"{R}/controls/teacher"),
        conda:
            ENV
        log:
            f"{LOGS}/init_random_teacher.log",
        benchmark:
            f"{BENCH}/init_random_teacher.tsv"
        params:
            seed=EXP.controls.seed,
        script:
            "../scripts/init_random_teacher.py"

    rule cache_control:
        """The untrained teacher cached exactly like the real one (same settings, the controlled arms' layers)."""
        input:
            teacher=f"{R}/controls/teacher",
            train=f"{R}/data/train.npy",
            info=f"{R}/data/data.json",
        output:
            directory(f"{R}/controls/cache"),
        conda:
            ENV
        log:
            f"{LOGS}/cache_control.log",
        benchmark:
            f"{BENCH}/cache_control.tsv"
        params:
            cache=config["cache"],
            capture={a: s for a, s in capture_spec(EXP).items() if a in CONTROLS.values()},
            student_layers=student_depth(EXP, PRETRAINED["student"]),
            student_tokens=cached_tokens(EXP),  # the real cache's sequences: twins see their arms' batches
            work=f"{WORK}/controls/cache",
        threads: workflow.cores
        resources:
            gpu=GPUS,
        script:
            "../scripts/cache_teacher.py"


if CURVE_ARMS:

    rule train_curve:
        """One run per arm and seed to the largest budget, a warmup-stable-decay schedule that branches a decay at
        every budget: each branch end is one budget-curve student (kdbench.train.student.fit_curve)."""
        input:
            init=f"{R}/students/init/seed{{seed}}",
            cache=TEACHER_TARGETS,
            teacher=f"{R}/teacher",
            val=f"{R}/data/val.npy",
            train=ONLINE_INPUTS,
            tuned=tuned,
        output:
            BRANCH_OUTPUTS,
        wildcard_constraints:
            arm=one_of(CURVE_ARMS),
        conda:
            ENV
        log:
            f"{LOGS}/train_curve/{{arm}}/seed{{seed}}.log",
        benchmark:
            f"{BENCH}/train_curve/{{arm}}/seed{{seed}}.tsv"
        params:
            arm=lambda w: config["arms"][w.arm],
            train=lambda w: {**config["student"]["train"], "tokens": BUDGETS[-1]},
            budgets=CURVE_BUDGETS,  # in the order of the outputs
            decay=EXP.analysis.decay,
            work=lambda w: f"{WORK}/curves/{w.arm}/seed{w.seed}",
            online=ONLINE_SPEC,
        threads: 1
        resources:
            gpu=GPUS,
        script:
            "../scripts/train_student.py"


if BUDGET_ONLY and not BRANCHES:

    rule train_budget:
        """One budget-curve student: the arm's settings, `budget` student tokens, its own schedule."""
        input:
            init=f"{R}/students/init/seed{{seed}}",
            cache=TEACHER_TARGETS,
            teacher=f"{R}/teacher",
            val=f"{R}/data/val.npy",
            train=ONLINE_INPUTS,
            tuned=tuned,
        output:
            directory(f"{R}/budgets/b{{budget}}/students/{{arm}}/seed{{seed}}"),
        conda:
            ENV
        log:
            f"{LOGS}/train_budget/b{{budget}}/{{arm}}/seed{{seed}}.log",
        benchmark:
            f"{BENCH}/train_budget/b{{budget}}/{{arm}}/seed{{seed}}.tsv"
        params:
            arm=lambda w: config["arms"][w.arm],
            train=lambda w: {**config["student"]["train"], "tokens": int(w.budget)},
            work=lambda w: f"{WORK}/budgets/b{w.budget}/{w.arm}/seed{w.seed}",
            online=ONLINE_SPEC,
            budgets=[],  # one cosine run
            decay=0.0,
        threads: 1
        resources:
            gpu=GPUS,
        script:
            "../scripts/train_student.py"


if PROBES:

    rule probe_models:
        """KL(teacher || student) and linear CKA of every layer pair, per model, on validation sequences."""
        input:
            teacher=f"{R}/teacher",
            val=f"{R}/data/val.npy",
            models=[f"{R}/{m}" for m in PROBED],
        output:
            kl=f"{A}/probes/kl.csv",
            cka=f"{A}/probes/cka.csv",
        conda:
            ENV
        log:
            f"{LOGS}/probe_models.log",
        benchmark:
            f"{BENCH}/probe_models.tsv"
        params:
            probed=PROBED,
            val_seqs=EXP.analysis.val_seqs,
            cka=EXP.analysis.cka,
        threads: workflow.cores
        script:
            "../scripts/probe_models.py"


if ANALYSIS:

    rule analyze:
        """Tables, figures and why.md from the evaluations, probes and train.json files (kdbench.analysis.explain)."""
        input:
            evals=expand(f"{R}/eval/{{model}}/results.json", model=[*MODELS, *CONTROL_STUDENTS, *BUDGET_ONLY]),
            budget_models=[f"{R}/{m}" for m in BUDGET_ONLY],
            probes=rules.probe_models.output if PROBES else [],
        output:
            **analysis_outputs(),
        conda:
            ENV
        log:
            f"{LOGS}/analyze.log",
        benchmark:
            f"{BENCH}/analyze.tsv"
        params:
            stats=config["stats"],
            analysis=config.get("analysis", {}),
            arms=config["arms"],
            models=MODELS,
            controls=CONTROLS,
            budgets=BUDGET_MODELS,
            results=lambda w, input: str(Path(input.evals[0]).parents[2]),  # results/<experiment>
            out=lambda w, output: str(Path(output.why).parent),
        script:
            "../scripts/analyze.py"
