# Pretrained assets (text encoders, Inception, CLIP, chunked checkpoints) and
# feature extractors trained by the workflow itself.


rule pretrained:
    output:
        directory(f"{RESULTS}/pretrained/{{asset}}"),
    params:
        cfg=lambda wc: wf.asset_config(config, wc.asset),
    log:
        f"{RESULTS}/logs/pretrained/{{asset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrained/{{asset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/assemble_asset.py"


rule shapes_extractor:
    input:
        lambda wc: dataset_done(wc.dataset),
    output:
        weights=f"{RESULTS}/datasets/{{dataset}}/extractors/shapes-cnn/model.safetensors",
        config=f"{RESULTS}/datasets/{{dataset}}/extractors/shapes-cnn/config.json",
    params:
        cfg=config["extractors"]["shapes-cnn"],
        image_size=lambda wc: wf.dataset_config(config, wc.dataset)["image_size"],
        dataset_dir=lambda wc: f"{RESULTS}/datasets/{wc.dataset}",
    log:
        f"{RESULTS}/logs/extractor/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extractor/{{dataset}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/train_shapes_extractor.py"
