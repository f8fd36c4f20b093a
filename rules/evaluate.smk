# Metrics: every metric family of t2i.eval.registry that applies (Shapes accuracy, FID/KID/IS, CLIP score).


rule reference_stats:
    input:
        dataset=lambda wc: wf.dataset_done(wc.dataset),
        extractor=f"{RESULTS}/pretrained/{{asset}}",
    output:
        f"{RESULTS}/datasets/{{dataset}}/fidelity/{{extractor}}/{{asset}}/{{prompt_set}}.npz",
    log:
        f"{RESULTS}/logs/reference_stats/{{dataset}}_{{extractor}}_{{asset}}_{{prompt_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_stats/{{dataset}}_{{extractor}}_{{asset}}_{{prompt_set}}.tsv"
    threads: SHARED_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=lambda wc: wf.evaluation_gpu(config, wc.dataset),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/reference_stats.py"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/{{exp}}/metrics/{{prompt_set}}.json",
    params:
        exp=stage_params("evaluate"),
    log:
        f"{RESULTS}/logs/{{exp}}/evaluate_{{prompt_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/evaluate_{{prompt_set}}.tsv"
    threads: stage_threads("evaluate")
    priority: experiment_priority
    resources:
        **stage_resources("evaluate"),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/evaluate.py"
