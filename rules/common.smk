# Config look-ups and input functions shared by every rule (the logic lives in t2i.workflow).
import re

from t2i import workflow as wf

RESULTS = wf.RESULTS


def shared_job_threads():
    """Jobs every experiment waits on (assets, reference statistics) take half the cores: on a 2-core laptop one
    each, so an experiment's own jobs run beside them. Two where no local core count is set (a cluster executor,
    a dry run)."""
    from snakemake.exceptions import WorkflowError

    try:
        return max(1, workflow.cores // 2)
    except WorkflowError:
        return 2


SHARED_JOB_THREADS = shared_job_threads()
PRIORITIES = wf.scheduling_priorities(config)
EXPERIMENTS = list(config["experiments"])
RUN = config["run"]


wildcard_constraints:
    exp="|".join(map(re.escape, EXPERIMENTS)),
    dataset="|".join(map(re.escape, config["datasets"])),
    asset="|".join(map(re.escape, config["pretrained"])) or "^$",
    prompt_set=r"[A-Za-z0-9_-]+",
    extractor="shapes-cnn|inception-v3-compat",


def stage_inputs(stage):
    """Named inputs (role -> path) of an experiment's `stage` job, for `unpack()`."""
    return lambda wc: wf.stage_inputs(config, wc.exp, stage)


def sample_inputs(wc):
    """The sample job's named inputs: its stage's, and the prompt set's layouts where the system plans."""
    return wf.stage_inputs(config, wc.exp, "sample", wc.prompt_set)


def stage_params(stage):
    return lambda wc: wf.stage_params(config, wc.exp, stage)


def stage_resource(stage, key):
    return lambda wc: wf.stage_resources(config, wc.exp, stage)[key]


def stage_threads(stage):
    return stage_resource(stage, "cpus_per_task")


def experiment_priority(wc):
    """Snakemake `priority` of an experiment's jobs (t2i.workflow.scheduling_priorities)."""
    return PRIORITIES.get(("experiment", wc.exp), 0)


def asset_priority(wc):
    return PRIORITIES.get(("asset", wc.asset), 0)


def stage_resources(stage):
    """The `resources:` of an experiment's `stage` job."""
    return {key: stage_resource(stage, key) for key in ("mem_mb", "runtime", "cpus_per_task", "gpu", "gpu_model")}


def evaluate_inputs(wc):
    """Samples, dataset, and what each metric family of the experiment needs (t2i.eval.registry)."""
    from t2i.eval.registry import family_inputs

    return {"samples": f"{RESULTS}/{wc.exp}/samples/{wc.prompt_set}",
            "dataset": wf.dataset_done(config["experiments"][wc.exp]["dataset"]),
            **family_inputs(config, wc.exp, wc.prompt_set)}


def report_inputs(wildcards):
    files = []
    for exp in RUN:
        model = wf.stage_inputs(config, exp, wf.model_stage(config["experiments"][exp]["system"])).get("model")
        files += [model] if model else []  # none where the experiment samples without a model (LPD's base alone)
        files += [f"{RESULTS}/{exp}/metrics/{ps}.json" for ps in wf.prompt_sets(config, exp)]
        files += [f"{RESULTS}/{exp}/samples/{ps}" for ps in wf.prompt_sets(config, exp)]
    return files


def archive(wc):
    """The archive entry (url, sha256, folder) of a download's file name."""
    return wf.archives(config)[wc.file]
