"""rule plan -> System.plan."""
from pathlib import Path

from t2i.jobs import stage_job
from t2i.systems import get_system
from t2i.utils.atomic import read_jsonl
from t2i.utils.joblog import workflow_job

prompt_set = snakemake.wildcards.prompt_set
with workflow_job(snakemake, f"plan {snakemake.wildcards.exp}/{prompt_set}"):
    exp, inputs = stage_job(snakemake, "plan")
    prompts = read_jsonl(inputs["dataset"] / "prompts" / f"{prompt_set}.jsonl")
    get_system(exp["system"]).plan(exp, inputs, prompts, Path(snakemake.output[0]))
