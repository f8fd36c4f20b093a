# Sampling: one directory of PNGs + index.jsonl per experiment and prompt set.


rule sample:
    input:
        unpack(sample_inputs),
    output:
        directory(f"{RESULTS}/{{exp}}/samples/{{prompt_set}}"),
    params:
        exp=stage_params("sample"),
    log:
        f"{RESULTS}/logs/{{exp}}/sample_{{prompt_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/sample_{{prompt_set}}.tsv"
    threads: stage_threads("sample")
    priority: experiment_priority
    resources:
        **stage_resources("sample"),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/sample.py"
