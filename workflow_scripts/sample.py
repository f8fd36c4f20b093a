"""rule sample -> System.sample."""
from pathlib import Path

from t2i.systems import get_system
from t2i.utils.atomic import atomic_dir, read_jsonl
from t2i.utils.joblog import job_logging

exp = snakemake.params.exp
with job_logging(snakemake.log[0], f"sample {exp['name']}/{snakemake.wildcards.prompt_set}"):
    prompts = read_jsonl(snakemake.params.prompts)
    with atomic_dir(snakemake.output[0]) as out:
        get_system(exp["system"]).sample(
            exp, Path(snakemake.params.ckpt_dir), Path(snakemake.input.text_encoder), prompts, out
        )
