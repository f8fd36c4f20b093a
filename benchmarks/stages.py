"""The workflow's stage functions called in the DAG's order without Snakemake, for benchmarks that also run on a
GPU machine without the scheduler (``pixel_sdxl_chain.py``, ``lpd_shapes.py``). Each step reuses what the working
directory's ``results/`` already holds and prints its wall time as a JSON line."""
from __future__ import annotations

import json
import time
from pathlib import Path


def timed(label: str, fn, *args, **kwargs):
    start = time.time()
    out = fn(*args, **kwargs)
    print(json.dumps({"stage": label, "wall_s": round(time.time() - start, 1)}), flush=True)
    return out


def build_datasets(cfg: dict, experiments: list[str]) -> None:
    from t2i import workflow as wf
    from t2i.data.build import build_dataset

    for name in sorted({cfg["experiments"][e]["dataset"] for e in experiments}):
        if not Path(wf.dataset_done(name)).is_file():
            timed(f"dataset {name}", build_dataset, wf.dataset_config(cfg, name), Path(wf.RESULTS) / "datasets" / name)


def build_asset(cfg: dict, name: str) -> None:
    """Asset ``name``, after the assets its recipe trains from."""
    from t2i import workflow as wf
    from t2i.checkpoints.assemble import assemble_asset

    for key, dep in wf.asset_dependencies(cfg, name).items():
        if key != "dataset":
            build_asset(cfg, Path(dep).name)
    out = Path(wf.RESULTS) / "pretrained" / name
    if not out.is_dir():
        timed(f"asset {name}", assemble_asset, name, wf.asset_config(cfg, name), out)


def prepare_and_train(cfg: dict, exp_name: str) -> None:
    """``exp_name``'s prepare and train stages (each unless already done)."""
    from t2i import workflow as wf
    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.jobs import verified_inputs
    from t2i.systems import get_system
    from t2i.utils.atomic import atomic_dir

    system = get_system(cfg["experiments"][exp_name]["system"])
    out = Path(wf.RESULTS) / exp_name
    if not (out / "prepared").is_dir():
        with atomic_dir(out / "prepared") as tmp:
            system.prepare(wf.stage_experiment(cfg, exp_name, "prepare"),
                           verified_inputs(wf.stage_inputs(cfg, exp_name, "prepare")), tmp)
            write_sha256sums(tmp)
    if not Path(wf.model_dir(exp_name)).is_dir():
        timed(f"train {exp_name}", system.train, wf.stage_experiment(cfg, exp_name, "train"),
              verified_inputs(wf.stage_inputs(cfg, exp_name, "train")), out / "train")
