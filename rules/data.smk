# Datasets: generate (Shapes-T2I), download + convert (COCO), or adopt a local caption dir.


rule dataset:
    input:
        unpack(lambda wc: wf.dataset_inputs(config, wc.dataset)),
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



rule download:
    output:
        f"{wf.DOWNLOADS}/{{file}}",
    params:
        url=lambda wc: archive(wc)["url"],
        sha256=lambda wc: archive(wc)["sha256"],
    log:
        f"{RESULTS}/logs/downloads/{{file}}.log",
    wildcard_constraints:
        file="|".join(map(re.escape, wf.archives(config))) or "^$",
    threads: 1
    resources:
        runtime=600,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/download.py"


rule unzip:
    input:
        lambda wc: f"{wf.DOWNLOADS}/{next(f for f, a in wf.archives(config).items() if a['folder'] == wc.folder)}",
    output:
        directory(f"{wf.DOWNLOADS}/unzipped/{{folder}}"),
    log:
        f"{RESULTS}/logs/downloads/unzip_{{folder}}.log",
    wildcard_constraints:
        folder="|".join(map(re.escape, (a["folder"] for a in wf.archives(config).values()))) or "^$",
    threads: 1
    resources:
        runtime=240,
        gpu=0,
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/unzip.py"
