"""``python -m t2i.train.entry JOB_JSON OUT_DIR``: train one experiment.

``JOB_JSON`` holds ``{"exp": {... "system" ...}, "inputs": {role: folder}}``. ``accelerate launch``
starts this module once per process (see :mod:`t2i.train.launch`); it hands the experiment to
its system, whose ``train`` builds a TrainTask and runs the shared loop.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

import torch

from t2i.utils.joblog import LOG_FORMAT


def load_system(name: str):
    """A system registered in :mod:`t2i.systems`, or ``module:Class`` for one defined elsewhere (e.g. tests)."""
    if ":" in name:
        module, cls = name.split(":")
        return getattr(importlib.import_module(module), cls)()
    from t2i.systems import get_system

    return get_system(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m t2i.train.entry", description=__doc__.splitlines()[0])
    parser.add_argument("job_json", type=Path, help='{"exp": the experiment (with `system`), "inputs": {role: folder}}')
    parser.add_argument("out_dir", type=Path, help="where the model folder, logs and state/ go")
    args = parser.parse_args(argv)
    job = json.loads(args.job_json.read_text(encoding="utf-8"))
    inputs = {role: Path(folder) for role, folder in job["inputs"].items()}
    load_system(job["exp"]["system"]).train(job["exp"], inputs, args.out_dir)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit for each `accelerate launch` worker


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    main()
