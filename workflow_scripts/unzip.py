"""rule unzip -> t2i.data.build.unzip_into."""
from t2i.data.build import unzip_into
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, f"unzip {snakemake.input[0]}"):
    unzip_into(snakemake.input[0], snakemake.output[0])
