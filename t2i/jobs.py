"""The run-time side of an experiment's stage job (``workflow_scripts/``): what it computes with.

``t2i.workflow`` decides at DAG time what a job depends on; here a running job gets its
experiment slice (with the speed knobs that its params leave out), its input folders by
role, each verified against its ``SHA256SUMS``, and the check that the GPUs it asked for work.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from t2i import workflow as wf
from t2i.checkpoints.hashing import MANIFEST, verify_sha256sums
from t2i.utils.device import require_gpus

log = logging.getLogger(__name__)


def verified_inputs(named: dict[str, str]) -> dict[str, Path]:
    """Input folders by role; every folder with a ``SHA256SUMS`` is checked against it first."""
    folders = wf.input_folders(named)
    for role, folder in folders.items():
        if folder.is_dir() and (folder / MANIFEST).is_file():
            start = time.time()
            count = verify_sha256sums(folder)
            log.info("input %s: %s verified (%d files, %.1f s)", role, folder, count, time.time() - start)
    return folders


def stage_job(smk, stage: str) -> tuple[dict, dict[str, Path]]:
    """``(experiment slice, verified inputs)`` of a running ``stage`` job of experiment ``wildcards.exp``."""
    exp_name = smk.wildcards.exp
    exp = wf.stage_experiment(smk.config, exp_name, stage)
    require_gpus(wf.stage_resources(smk.config, exp_name, stage)["gpu"], f"{stage} {exp_name}")
    named = {role: str(path) for role, path in smk.input.items()}
    return exp, verified_inputs(named)
