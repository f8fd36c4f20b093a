"""rule report -> t2i.report.build_report."""
from pathlib import Path

from t2i.report.collect import collect_experiments
from t2i.report.html import build_report
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, "report"):
    results = Path(snakemake.output.html).parents[1]
    experiments = collect_experiments(snakemake.params.experiments, results)
    build_report(experiments, Path(snakemake.output.html).parent, grid_images=snakemake.params.cfg["grid_images"])
