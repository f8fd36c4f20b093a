# System-specific preparation (e.g. cached text features) and the shared training loop.


rule prepare:
    input:
        unpack(stage_inputs("prepare")),
    output:
        directory(f"{RESULTS}/{{exp}}/prepared"),
    params:
        exp=stage_params("prepare"),
    log:
        f"{RESULTS}/logs/{{exp}}/prepare.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/prepare.tsv"
    threads: stage_threads("prepare")
    priority: experiment_priority
    resources:
        **stage_resources("prepare"),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/prepare.py"


rule train:
    input:
        unpack(stage_inputs("train")),
    output:
        directory(f"{RESULTS}/{{exp}}/train/model"),
    params:
        exp=stage_params("train"),
    log:
        f"{RESULTS}/logs/{{exp}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/train.tsv"
    threads: stage_threads("train")
    priority: experiment_priority
    resources:
        **stage_resources("train"),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/train.py"
