"""The device a job computes on, and the check that a job granted GPUs really has them."""
from __future__ import annotations

import os

import torch

# Opt-in for tests that run `gpu > 0` experiments on CPU-only machines (gloo instead of NCCL).
ALLOW_CPU_ENV = "T2I_ALLOW_CPU_FOR_GPU_JOBS"


class NoGPUError(RuntimeError):
    """An experiment asks for GPUs but this job sees no working CUDA device."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sampling_dtype(name: str, device: torch.device) -> torch.dtype:
    """``sample.dtype``: fp32, bf16, or auto (bf16 on CUDA, fp32 on a CPU)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def require_gpus(count: int, what: str) -> None:
    """Fail at once when ``count`` GPUs are asked for (``resources.gpu``) and CUDA is unusable here.

    Training 8 gloo processes on CPU because a driver is missing would run for days unnoticed.
    ``T2I_ALLOW_CPU_FOR_GPU_JOBS=1`` allows it (the multi-process tests on CPU machines).
    """
    if count <= 0 or torch.cuda.is_available() or os.environ.get(ALLOW_CPU_ENV) == "1":
        return
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise NoGPUError(
        f"{what}: resources.gpu is {count} but no CUDA device works in this job "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}, CUDA_VISIBLE_DEVICES={seen!r}); "
        f"fix the driver/allocation, set resources.gpu: 0 to run on CPU, or set {ALLOW_CPU_ENV}=1 to allow CPU")
