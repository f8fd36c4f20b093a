"""rule sample -> System.sample."""
from t2i import workflow as wf
from t2i.jobs import stage_job
from t2i.systems import get_system
from t2i.utils.atomic import atomic_dir, read_jsonl
from t2i.utils.joblog import workflow_job

prompt_set = snakemake.wildcards.prompt_set
with workflow_job(snakemake, f"sample {snakemake.wildcards.exp}/{prompt_set}"):
    exp, inputs = stage_job(snakemake, "sample")
    prompts = read_jsonl(inputs["dataset"] / "prompts" / f"{prompt_set}.jsonl")
    with atomic_dir(snakemake.output[0]) as out:
        get_system(exp["system"]).sample(exp, inputs, prompts, out)
