"""rule train -> the shared launcher (accelerate for >1 process) -> System.train."""
from t2i import workflow as wf
from t2i.jobs import stage_job
from t2i.train.launch import launch_training
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, f"train {snakemake.wildcards.exp}"):
    exp, inputs = stage_job(snakemake, "train")
    gpus = wf.stage_resources(snakemake.config, exp["name"], "train")["gpu"]
    launch_training(exp, inputs, f"{wf.RESULTS}/{exp['name']}/train", num_processes=max(1, gpus), gpus=gpus)
