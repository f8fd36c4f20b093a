"""Config look-ups the rules share (kept out of the .smk files so they are unit-tested).

``stage_experiment`` returns exactly the config slice that one rule's output depends
on; Snakemake reruns a job when its params change, so these slices decide what a
config edit reruns.
"""
from __future__ import annotations

import os
from typing import Any


def expose_library(basedir: str) -> None:
    """Put the workflow's source tree on jobs' PYTHONPATH, so any job environment imports this t2i."""
    paths = [basedir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != basedir]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


def experiment(config: dict, name: str) -> dict:
    """The validated experiment block, with its ``name``."""
    return {"name": name, **config["experiments"][name]}


def dataset_config(config: dict, name: str) -> dict:
    return config["datasets"][name]


def asset_config(config: dict, name: str) -> dict:
    return config["pretrained"][name]


def prompt_sets(config: dict, exp: str) -> list[str]:
    return list(config["experiments"][exp]["sample"]["prompt_sets"])


# The experiment blocks each stage's output depends on. A stage's system call receives only
# these (so it cannot depend on anything else by accident), and they are its rule's params
# (so an edit anywhere else never reruns it). Upstream changes reach a stage through its input
# files: a new dataset or text encoder reruns `prepare`, new weights rerun `sample`.
STAGE_BLOCKS: dict[str, tuple[str, ...]] = {
    "prepare": ("system", "dataset", "text_encoder"),
    "train": ("system", "model", "train"),
    "sample": ("system", "text_encoder", "sample"),
    "evaluate": ("evaluate",),
}


def stage_experiment(config: dict, exp: str, stage: str) -> dict:
    """The slice of experiment ``exp`` that ``stage`` depends on, with its ``name``.

    ``sample`` leaves out ``prompt_sets``: adding a prompt set must not resample the others.
    """
    e = config["experiments"][exp]
    view = {"name": exp, **{block: e[block] for block in STAGE_BLOCKS[stage]}}
    if stage == "sample":
        view["sample"] = {k: v for k, v in e["sample"].items() if k != "prompt_sets"}
    return view


def heavy_resources(config: dict, exp: str) -> dict[str, Any]:
    """Scheduler resources of an experiment's prepare/train/sample jobs (names the slurm plugin reads).

    ``gpu_model`` is None unless the experiment asks for GPUs of a named model.
    """
    r = config["experiments"][exp]["resources"]
    return {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["cpus_per_task"], "gpu": r["gpu"],
            "gpu_model": r["gpu_model"] if r["gpu"] else None}
