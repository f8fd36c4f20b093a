"""rule shapes_extractor -> t2i.eval.shapes_classifier.train_shapes_classifier."""
from pathlib import Path

from t2i.eval.shapes_classifier import train_shapes_classifier
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, f"shapes-cnn extractor {snakemake.wildcards.dataset}"):
    train_shapes_classifier(
        snakemake.params.dataset_dir,
        Path(snakemake.output.weights).parent,
        seed=snakemake.params.cfg["seed"],
        steps=snakemake.params.cfg["steps"],
        image_size=snakemake.params.image_size,
    )
