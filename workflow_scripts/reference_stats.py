"""rule reference_stats -> t2i.eval.fidelity.reference_stats (cached once per dataset and prompt set)."""
from t2i.eval.evaluate import write_reference_stats
from t2i.utils.joblog import workflow_job

w = snakemake.wildcards
with workflow_job(snakemake, f"reference stats {w.dataset}/{w.extractor}/{w.prompt_set}"):
    write_reference_stats(snakemake.params.dataset_dir, w.prompt_set, w.extractor, snakemake.input.extractor,
                          snakemake.output[0])
