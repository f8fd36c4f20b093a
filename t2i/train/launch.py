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


def launch_training(exp: dict, prepared_dir: str | Path, out_dir: str | Path, num_processes: int) -> None:
    """Train experiment ``exp`` (rule train): on GPUs when there are any, else on CPU."""
    exp_json = Path(out_dir) / "experiment.json"
    atomic_write_json(exp_json, exp)
    launch([str(exp_json), str(prepared_dir), str(out_dir)], num_processes, cpu=not torch.cuda.is_available())
