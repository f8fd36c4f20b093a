"""rule dataset -> t2i.data.build.build_dataset."""
from pathlib import Path

from t2i import workflow as wf
from t2i.data.build import build_dataset
from t2i.utils.joblog import workflow_job

dataset = snakemake.wildcards.dataset
with workflow_job(snakemake, f"dataset {dataset}"):
    build_dataset(wf.dataset_config(snakemake.config, dataset), Path(snakemake.output.done).parent,
                  {key: Path(path) for key, path in snakemake.input.items()})
