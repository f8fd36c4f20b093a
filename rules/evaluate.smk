# Metrics: Shapes compositional accuracy, FID/KID/IS (torch-fidelity), CLIP score.


rule reference_stats:
    input:
        dataset=lambda wc: dataset_done(wc.dataset),
        extractor=lambda wc: (
            f"{RESULTS}/pretrained/inception"
            if wc.extractor == "inception-v3-compat"
            else f"{RESULTS}/datasets/{wc.dataset}/extractors/shapes-cnn/model.safetensors"
        ),
    output:
        f"{RESULTS}/datasets/{{dataset}}/fidelity/{{extractor}}/{{prompt_set}}.npz",
    params:
        dataset_dir=lambda wc: f"{RESULTS}/datasets/{wc.dataset}",
    log:
        f"{RESULTS}/logs/reference_stats/{{dataset}}_{{extractor}}_{{prompt_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_stats/{{dataset}}_{{extractor}}_{{prompt_set}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/reference_stats.py"


rule evaluate:
    input:
        samples=f"{RESULTS}/{{exp}}/samples/{{prompt_set}}",
        reference=lambda wc: (
            f"{dataset_dir_of(wc.exp)}/fidelity/"
            f"{wf.experiment(config, wc.exp)['evaluate']['extractor']}/{wc.prompt_set}.npz"
        ),
        extractor=lambda wc: extractor_files(wc.exp),
        clip=lambda wc: clip_files(wc.exp),
    output:
        f"{RESULTS}/{{exp}}/metrics/{{prompt_set}}.json",
    params:
        exp=lambda wc: wf.stage_experiment(config, wc.exp, "evaluate"),
        dataset_dir=lambda wc: dataset_dir_of(wc.exp),
    log:
        f"{RESULTS}/logs/{{exp}}/evaluate_{{prompt_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/evaluate_{{prompt_set}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/evaluate.py"
