"""rule report -> t2i.report.build_report."""
from pathlib import Path

from t2i import workflow as wf
from t2i.report.collect import collect_experiments
from t2i.report.html import build_report
from t2i.utils.joblog import workflow_job

with workflow_job(snakemake, "report"):
    config = snakemake.config
    experiments = [wf.experiment(config, name) for name in config["run"]]
    records = collect_experiments(experiments, Path(wf.RESULTS))
    build_report(records, Path(snakemake.output.html).parent, grid_images=config["report"]["grid_images"])
