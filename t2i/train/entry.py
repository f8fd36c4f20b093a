"""``python -m t2i.train.entry EXP_JSON PREPARED_DIR OUT_DIR``: train one experiment.

``accelerate launch`` starts this module once per process (see :mod:`t2i.train.launch`);
it hands the experiment to its system, whose ``train`` calls the shared loop.
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
    parser.add_argument("exp_json", type=Path, help="the experiment dict (with `name` and `system`) as JSON")
    parser.add_argument("prepared_dir", type=Path, help="the system's prepared training data")
    parser.add_argument("out_dir", type=Path, help="where weights, logs and state/ go")
    args = parser.parse_args(argv)
    exp = json.loads(args.exp_json.read_text(encoding="utf-8"))
    load_system(exp["system"]).train(exp, args.prepared_dir, args.out_dir)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit for each `accelerate launch` worker


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    main()
