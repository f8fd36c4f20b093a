"""rule dataset -> t2i.data.build.build_dataset."""
from t2i.data.build import build_dataset
from t2i.utils.joblog import job_logging

with job_logging(snakemake.log[0], f"dataset {snakemake.wildcards.dataset}"):
    build_dataset(snakemake.params.cfg, snakemake.params.out_dir)
