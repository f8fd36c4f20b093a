# Sampling: one directory of PNGs + index.jsonl per experiment and prompt set.


rule sample:
    input:
        weights=f"{RESULTS}/{{exp}}/train/model.safetensors",
        model_config=f"{RESULTS}/{{exp}}/train/model_config.json",
        text_encoder=lambda wc: text_encoder_dir(wc.exp),
        dataset=lambda wc: dataset_done(wf.experiment(config, wc.exp)["dataset"]),
    output:
        directory(f"{RESULTS}/{{exp}}/samples/{{prompt_set}}"),
    params:
        exp=lambda wc: wf.stage_experiment(config, wc.exp, "sample"),
        prompts=lambda wc: f"{dataset_dir_of(wc.exp)}/prompts/{wc.prompt_set}.jsonl",
        ckpt_dir=lambda wc: f"{RESULTS}/{wc.exp}/train",
    log:
        f"{RESULTS}/logs/{{exp}}/sample_{{prompt_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{exp}}/sample_{{prompt_set}}.tsv"
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
        "../workflow_scripts/sample.py"
