"""A tiny regression task for the training-loop tests, usable in-process and in subprocesses.

``ToySystem`` follows the System interface, so ``python -m t2i.train.entry`` runs it
(with ``system: "toy_training:ToySystem"`` and this folder on ``PYTHONPATH``).
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from t2i.train.loop import run_training
from t2i.train.optim import adamw_from_train_config, ema_from_train_config

DIM = 8
TESTS = Path(__file__).resolve().parent


class ToyDataset(torch.utils.data.Dataset):
    """``n`` fixed random inputs and their images under a fixed random linear map (the target)."""

    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, DIM, generator=g)
        self.y = self.x @ torch.randn(DIM, DIM, generator=g) / DIM ** 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def toy_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DIM, 32), torch.nn.GELU(), torch.nn.Linear(32, DIM))


class ToyTask:
    """MSE on noise-perturbed inputs (randomness from the global RNG); ``sleep_s`` slows each step."""

    def __init__(self, cfg: dict, sleep_s: float = 0.0):
        net = toy_model(cfg.get("seed", 0))
        self.modules, self.frozen = {"net": net}, {}
        self.optimizers = {"opt": adamw_from_train_config(net, cfg)}
        self.ema = [ema_from_train_config("net", cfg)]
        self.identity = {"model": "toy-mlp", "dim": DIM}
        self.sleep_s = sleep_s

    def step(self, batch, step, ctx):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        x = batch["x"] + 0.1 * torch.randn_like(batch["x"])
        loss = torch.nn.functional.mse_loss(ctx.module("net")(x), batch["y"])
        ctx.backward(loss)
        ctx.optimizer_step("opt")
        return {"loss": loss.detach()}

    def export(self, weights, out_dir):
        save_file(weights["net"], str(out_dir / "model.safetensors"))
        (out_dir / "config.json").write_text(json.dumps(self.identity))


@contextlib.contextmanager
def single_thread():
    """A tiny model: more threads only contend (and crawl on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ToySystem:
    """``exp``: ``train`` (the loop's config) and optional ``toy: {sleep_s}``."""

    def train(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> dict:
        with single_thread():
            task = ToyTask(exp["train"], exp.get("toy", {}).get("sleep_s", 0.0))
            return run_training(task, ToyDataset(), exp["train"], out_dir, inputs=inputs)


def write_job(path: Path, train: dict, inputs: dict | None = None, system: str = "toy_training:ToySystem",
              **toy) -> Path:
    """A job JSON for ``python -m t2i.train.entry``."""
    exp = {"name": "toy", "system": system, "train": train, "toy": toy}
    path.write_text(json.dumps({"exp": exp, "inputs": inputs or {}}))
    return path


def spawn(tmp_path: Path, out_dir: Path, train_cfg: dict, log_name: str, **job) -> subprocess.Popen:
    """``python -m t2i.train.entry`` on a job from :func:`write_job`, output to ``tmp_path/log_name``."""
    job_json = write_job(tmp_path / f"{log_name}.json", train_cfg, **job)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / log_name, "wb")
    return subprocess.Popen([sys.executable, "-m", "t2i.train.entry", str(job_json), str(out_dir)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def saved_step(out_dir: Path) -> int:
    meta = out_dir / "state" / "meta.json"
    return json.loads(meta.read_text())["step"] if meta.exists() else 0


def log_rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "model" / "train_log.jsonl").read_text().splitlines()]


def assert_same_weights(dir_a: Path, dir_b: Path, names) -> None:
    """The safetensors files ``names`` (relative paths) hold equal tensors in both folders."""
    for name in names:
        a, b = load_file(dir_a / name), load_file(dir_b / name)
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
