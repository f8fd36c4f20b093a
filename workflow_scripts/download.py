"""rule download -> t2i.data.download.download_url (resumable, checksummed)."""
from t2i.data.download import download_url
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, f"download {snakemake.wildcards.file}"):
    download_url(snakemake.params.url, snakemake.output[0], sha256=snakemake.params.sha256)
