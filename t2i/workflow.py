"""Config look-ups the rules share (kept out of the .smk files so they are unit-tested).

Each ``*_params`` function returns exactly the config slice that one rule's output
depends on; Snakemake reruns a job when its params change, so these slices decide
what a config edit reruns.
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


def reference_sets(config: dict, exp: str) -> list[str]:
    """Prompt sets whose reference images the fidelity metrics compare against."""
    return prompt_sets(config, exp)


def prepare_params(config: dict, exp: str) -> dict:
    e = config["experiments"][exp]
    return {"system": e["system"], "dataset": config["datasets"][e["dataset"]], "text_encoder": e["text_encoder"],
            "text_encoder_asset": config["pretrained"][e["text_encoder"]["asset"]]}


def train_params(config: dict, exp: str) -> dict:
    e = config["experiments"][exp]
    return {"system": e["system"], "model": e["model"], "train": e["train"]}


def sample_params(config: dict, exp: str) -> dict:
    """The sample block minus ``prompt_sets`` (adding a prompt set must not rerun the others)."""
    e = config["experiments"][exp]
    return {k: v for k, v in e["sample"].items() if k != "prompt_sets"}


def evaluate_params(config: dict, exp: str) -> dict:
    return dict(config["experiments"][exp]["evaluate"])


def heavy_resources(config: dict, exp: str) -> dict[str, Any]:
    """Scheduler resources of an experiment's train/sample jobs (the slurm plugin reads these names)."""
    r = config["experiments"][exp]["resources"]
    res: dict[str, Any] = {"mem_mb": r["mem_mb"], "runtime": r["runtime"], "cpus_per_task": r["cpus_per_task"], "gpu": r["gpu"]}
    if r["gpu"] and r["gpu_model"]:
        res["gpu_model"] = r["gpu_model"]
    return res
