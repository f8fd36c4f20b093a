"""rule pretrained -> t2i.checkpoints.assemble.assemble_asset."""
from t2i.checkpoints.assemble import assemble_asset
from t2i.utils.joblog import job_logging

with job_logging(snakemake.log[0], f"pretrained {snakemake.wildcards.asset}"):
    assemble_asset(snakemake.wildcards.asset, snakemake.params.cfg, snakemake.output[0])
