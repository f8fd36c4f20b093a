# Config look-ups and input functions shared by every rule.
import re

from t2i import workflow as wf

RESULTS = "results"
EXPERIMENTS = list(config["experiments"])
RUN = config["run"]


wildcard_constraints:
    exp="|".join(map(re.escape, EXPERIMENTS)),
    dataset="|".join(map(re.escape, config["datasets"])),
    asset="|".join(map(re.escape, config["pretrained"])) or "^$",
    prompt_set=r"[A-Za-z0-9_-]+",
    extractor="shapes-cnn|inception-v3-compat",


def dataset_dir_of(exp):
    return f"{RESULTS}/datasets/{wf.experiment(config, exp)['dataset']}"


def dataset_done(dataset):
    """The file that marks a finished dataset (written last by `rule dataset`)."""
    return f"{RESULTS}/datasets/{dataset}/SHA256SUMS"


def text_encoder_dir(exp):
    return f"{RESULTS}/pretrained/{wf.experiment(config, exp)['text_encoder']['asset']}"


def extractor_files(exp):
    """Feature-extractor weights that an experiment's fidelity metrics need."""
    e = wf.experiment(config, exp)
    if e["evaluate"]["extractor"] == "inception-v3-compat":
        return [f"{RESULTS}/pretrained/inception"]
    return [f"{RESULTS}/datasets/{e['dataset']}/extractors/shapes-cnn/model.safetensors"]


def exp_resource(key, cap=None):
    """An experiment's `resources` value for train/sample-like jobs (cap: e.g. 1 GPU for inference)."""

    def get(wildcards):
        value = wf.heavy_resources(config, wildcards.exp)[key]
        return min(value, cap) if cap is not None else value

    return get


def clip_files(exp):
    """The CLIP model folder for CLIP score, if the experiment asks for one."""
    asset = wf.experiment(config, exp)["evaluate"]["clip_asset"]
    return [f"{RESULTS}/pretrained/{asset}"] if asset else []


def report_inputs(wildcards):
    files = []
    for exp in RUN:
        files.append(f"{RESULTS}/{exp}/train/model.safetensors")
        files += [f"{RESULTS}/{exp}/metrics/{ps}.json" for ps in wf.prompt_sets(config, exp)]
        files += [f"{RESULTS}/{exp}/samples/{ps}" for ps in wf.prompt_sets(config, exp)]
    return files
