"""rule report -> t2i.report.build_report."""
from pathlib import Path

from t2i.report.collect import collect_experiments
from t2i.report.html import build_report
from t2i.utils.joblog import job_logging

with job_logging(snakemake.log[0], "report"):
    results = Path(snakemake.output.html).parents[1]
    experiments = collect_experiments(snakemake.params.experiments, results)
    build_report(experiments, Path(snakemake.output.html).parent, grid_images=snakemake.params.cfg["grid_images"])
