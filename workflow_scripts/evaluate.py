"""rule evaluate -> t2i.eval.evaluate.evaluate_samples."""
from t2i.eval.evaluate import evaluate_samples
from t2i.utils.joblog import workflow_job

exp = snakemake.params.exp
with workflow_job(snakemake, f"evaluate {exp['name']}/{snakemake.wildcards.prompt_set}"):
    evaluate_samples(
        exp,
        prompt_set=snakemake.wildcards.prompt_set,
        samples_dir=snakemake.input.samples,
        dataset_dir=snakemake.params.dataset_dir,
        reference_stats=snakemake.input.reference,
        extractor_path=snakemake.input.extractor[0],
        out_path=snakemake.output[0],
        clip_dir=snakemake.input.clip[0] if snakemake.input.clip else None,
    )
