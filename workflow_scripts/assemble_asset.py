"""rule pretrained -> t2i.checkpoints.assemble.assemble_asset."""
from t2i import workflow as wf
from t2i.checkpoints.assemble import assemble_asset
from t2i.utils.joblog import workflow_job

asset = snakemake.wildcards.asset
with workflow_job(snakemake, f"pretrained {asset}"):
    assemble_asset(asset, wf.asset_config(snakemake.config, asset), snakemake.output[0])
