"""rule sample -> System.sample."""
from pathlib import Path

from t2i.systems import get_system
from t2i.utils.atomic import atomic_dir, read_jsonl
from t2i.utils.joblog import workflow_job

exp = snakemake.params.exp
with workflow_job(snakemake, f"sample {exp['name']}/{snakemake.wildcards.prompt_set}"):
    prompts = read_jsonl(snakemake.params.prompts)
    with atomic_dir(snakemake.output[0]) as out:
        get_system(exp["system"]).sample(
            exp, Path(snakemake.params.ckpt_dir), Path(snakemake.input.text_encoder), prompts, out
        )
