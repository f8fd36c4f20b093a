"""rule pretrained -> t2i.checkpoints.assemble.assemble_asset."""
from t2i.checkpoints.assemble import assemble_asset
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, f"pretrained {snakemake.wildcards.asset}"):
    assemble_asset(snakemake.wildcards.asset, snakemake.params.cfg, snakemake.output[0])
