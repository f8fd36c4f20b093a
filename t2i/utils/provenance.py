"""``provenance.json``: what produced an output directory (config slice, versions, commit, device)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from t2i.utils.atomic import atomic_write_json
from t2i.utils.secrets import redact

TRACKED_PACKAGES = (
    "t2i", "torch", "torchvision", "numpy", "transformers", "diffusers", "accelerate",
    "safetensors", "torch-fidelity", "snakemake", "huggingface_hub",
)


def config_hash(config_slice: Any) -> str:
    """Stable SHA-256 of a JSON-serialisable config slice."""
    blob = json.dumps(config_slice, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit(repo_dir: Path | None = None) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


SCHEDULER_ENV = ("SLURM_JOB_ID", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "SLURM_CPUS_PER_TASK")


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0]}
    scheduler = {k: os.environ[k] for k in SCHEDULER_ENV if k in os.environ}
    if scheduler:
        info["scheduler"] = scheduler
    try:
        import torch
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def write_provenance(out_dir: str | Path, config_slice: Any, *, seeds: Any = None,
                     wall_time_s: float | None = None, extra: dict | None = None) -> dict:
    """Write ``out_dir/provenance.json`` (secrets redacted) and return what was written."""
    record = {
        "config": redact(config_slice),
        "config_hash": config_hash(config_slice),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "device": device_info(),
        "seeds": seeds,
        "wall_time_s": wall_time_s,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        record.update(redact(extra))
    atomic_write_json(Path(out_dir) / "provenance.json", record)
    return record
