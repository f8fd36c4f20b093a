# Datasets: generate (Shapes-T2I), download + convert (COCO), or adopt a local caption dir.


rule dataset:
    output:
        images=directory(f"{RESULTS}/datasets/{{dataset}}/images"),
        captions=directory(f"{RESULTS}/datasets/{{dataset}}/captions"),
        prompts=directory(f"{RESULTS}/datasets/{{dataset}}/prompts"),
        splits=directory(f"{RESULTS}/datasets/{{dataset}}/splits"),
        annotations=f"{RESULTS}/datasets/{{dataset}}/annotations.jsonl",
        done=f"{RESULTS}/datasets/{{dataset}}/SHA256SUMS",
    params:
        cfg=lambda wc: wf.canonical(wf.dataset_config(config, wc.dataset)),
    log:
        f"{RESULTS}/logs/dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/dataset/{{dataset}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/build_dataset.py"
