"""Start training in one process, or in several through ``accelerate launch`` (torchrun).

One process runs :mod:`t2i.train.entry` in this interpreter. More processes run
``accelerate launch --multi_gpu --num_processes N -m t2i.train.entry ...``: NCCL on
GPUs; with ``cpu=True``, gloo on CPU (``ACCELERATE_USE_CPU``; accelerate's own
``--cpu`` flag starts a single process unless MPI is used). The workers' output is
relayed to this process's stderr (so it reaches the job log), SIGTERM/SIGINT are
forwarded to them (they save their state and exit), and a failure raises. The job's
CPU threads are shared among the workers, so they do not oversubscribe its cores.
"""
from __future__ import annotations

import codecs
import os
import subprocess
import sys
from pathlib import Path

import torch
from accelerate.utils import patch_environment

from t2i.train import entry
from t2i.train.state import handle_signals
from t2i.utils.atomic import atomic_write_json
from t2i.utils.device import require_gpus


def launch(entry_args: list[str | os.PathLike], num_processes: int, *, cpu: bool = False) -> None:
    """Run ``t2i.train.entry`` with ``entry_args`` on ``num_processes`` processes; raise if it fails."""
    env = {"ACCELERATE_USE_CPU": "true"} if cpu else {}
    if num_processes <= 1:
        with patch_environment(**env):
            entry.main([str(a) for a in entry_args])
        return
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "t2i.train.entry", *map(str, entry_args)]
    per_worker = str(max(1, torch.get_num_threads() // num_processes))
    env.update(OMP_NUM_THREADS=per_worker, MKL_NUM_THREADS=per_worker)
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with handle_signals(lambda signum, frame: proc.send_signal(signum)):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            sys.stderr.write(decoder.decode(chunk))
            sys.stderr.flush()
        returncode = proc.wait()
    if returncode:
        raise subprocess.CalledProcessError(returncode, cmd)


def launch_training(exp: dict, inputs: dict[str, str | os.PathLike], out_dir: str | Path, num_processes: int, *,
                    gpus: int) -> None:
    """Train experiment ``exp`` from ``inputs`` (role -> folder) into ``out_dir`` (rule train): on GPUs when
    there are any, else on CPU. ``gpus`` (``resources.gpu``) > 0 without a working CUDA device fails at once."""
    require_gpus(gpus, f"train {exp['name']}")
    job_json = Path(out_dir) / "job.json"
    atomic_write_json(job_json, {"exp": exp, "inputs": {role: str(folder) for role, folder in inputs.items()}})
    launch([job_json, out_dir], num_processes, cpu=not torch.cuda.is_available())
