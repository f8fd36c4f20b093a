"""rule train -> the shared launcher (accelerate for >1 process) -> System.train."""
from t2i.train.launch import launch_training
from t2i.utils.joblog import workflow_job

exp = snakemake.params.exp
with workflow_job(snakemake, f"train {exp['name']}"):
    launch_training(exp, snakemake.input.prepared, snakemake.params.out_dir, snakemake.params.num_processes)
