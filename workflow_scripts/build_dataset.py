"""rule dataset -> t2i.data.build.build_dataset."""
from t2i.data.build import build_dataset
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, f"dataset {snakemake.wildcards.dataset}"):
    build_dataset(snakemake.params.cfg, snakemake.params.out_dir)
