# System-specific preparation (e.g. cached text features) and the shared training loop.


rule prepare:
    input:
        dataset=lambda wc: dataset_done(wf.experiment(config, wc.exp)["dataset"]),
        text_encoder=lambda wc: text_encoder_dir(wc.exp),
    output:
        directory(f"{RESULTS}/{{exp}}/prepared"),
    params:
        exp=lambda wc: wf.stage_experiment(config, wc.exp, "prepare"),
        dataset_dir=lambda wc: dataset_dir_of(wc.exp),
    log:
        f"{RESULTS}/logs/{{exp}}/prepare.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/prepare.tsv"
    threads: exp_resource("cpus_per_task")
    resources:
        mem_mb=exp_resource("mem_mb"),
        runtime=exp_resource("runtime"),
        cpus_per_task=exp_resource("cpus_per_task"),
        gpu=exp_resource("gpu", cap=1),
        gpu_model=exp_resource("gpu_model"),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/prepare.py"


rule train:
    input:
        prepared=f"{RESULTS}/{{exp}}/prepared",
    output:
        weights=f"{RESULTS}/{{exp}}/train/model.safetensors",
        config=f"{RESULTS}/{{exp}}/train/model_config.json",
    params:
        exp=lambda wc: wf.stage_experiment(config, wc.exp, "train"),
        out_dir=lambda wc: f"{RESULTS}/{wc.exp}/train",
        num_processes=lambda wc: max(1, wf.heavy_resources(config, wc.exp)["gpu"]),
    log:
        f"{RESULTS}/logs/{{exp}}/train.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/train.tsv"
    threads: exp_resource("cpus_per_task")
    resources:
        mem_mb=exp_resource("mem_mb"),
        runtime=exp_resource("runtime"),
        cpus_per_task=exp_resource("cpus_per_task"),
        gpu=exp_resource("gpu"),
        gpu_model=exp_resource("gpu_model"),
    conda:
        "../envs/t2i.yaml"
    script:
        "../workflow_scripts/train.py"
