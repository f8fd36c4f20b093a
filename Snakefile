# t2i: download -> preprocess -> checkpoints -> train -> sample -> evaluate -> report.
# Config is validated (JSON schema + cross references) before the DAG is built.
from snakemake.utils import min_version

from t2i.config import validate_config
from t2i.workflow import expose_library

min_version("8.20")
expose_library(workflow.basedir)


configfile: "config.yaml"


config = validate_config(config)  # defaults filled; scripts see it as snakemake.config


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/checkpoints.smk"
include: "rules/train.smk"
include: "rules/plan.smk"
include: "rules/sample.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        "results/report/index.html",
