"""rule prepare -> System.prepare."""
from pathlib import Path

from t2i.systems import get_system
from t2i.utils.atomic import atomic_dir
from t2i.utils.joblog import workflow_job

exp = snakemake.params.exp
with workflow_job(snakemake, f"prepare {exp['name']}"), atomic_dir(snakemake.output[0]) as out:
    get_system(exp["system"]).prepare(exp, Path(snakemake.params.dataset_dir), Path(snakemake.input.text_encoder), out)
