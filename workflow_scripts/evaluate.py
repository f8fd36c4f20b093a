"""rule evaluate -> t2i.eval.evaluate.evaluate_samples."""
from t2i.eval.evaluate import evaluate_samples
from t2i.jobs import stage_job
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, f"evaluate {snakemake.wildcards.exp}/{snakemake.wildcards.prompt_set}"):
    exp, inputs = stage_job(snakemake, "evaluate")
    evaluate_samples(exp, prompt_set=snakemake.wildcards.prompt_set, inputs=inputs, out_path=snakemake.output[0])
