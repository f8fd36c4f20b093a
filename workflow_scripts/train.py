"""rule train -> the shared launcher (accelerate for >1 process) -> System.train."""
from t2i.train.launch import launch_training
from t2i.utils.joblog import job_logging

exp = snakemake.params.exp
with job_logging(snakemake.log[0], f"train {exp['name']}"):
    launch_training(exp, snakemake.input.prepared, snakemake.params.out_dir, snakemake.params.num_processes)
