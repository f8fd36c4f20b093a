"""rule reference_stats -> t2i.eval.fidelity.reference_stats (cached once per dataset, extractor and prompt set)."""
from t2i.eval.evaluate import write_reference_stats
from t2i.jobs import verified_inputs
from t2i.utils.joblog import workflow_job

w = snakemake.wildcards
with workflow_job(snakemake, f"reference stats {w.dataset}/{w.extractor}/{w.asset}/{w.prompt_set}"):
    inputs = verified_inputs(dict(snakemake.input.items()))
    write_reference_stats(inputs["dataset"], w.prompt_set, w.extractor, inputs["extractor"], snakemake.output[0])
