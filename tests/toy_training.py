"""A tiny regression problem for the training-loop tests, usable in-process and in subprocesses.

``ToySystem`` follows the System interface, so ``python -m t2i.train.entry`` runs it
(with ``system: "toy_training:ToySystem"`` and this folder on ``PYTHONPATH``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from t2i.train.loop import run_training

DIM = 8


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


def make_loss(sleep_s: float = 0.0):
    """MSE on noise-perturbed inputs (randomness from the global RNG); ``sleep_s`` slows each step."""

    def loss_fn(model, batch):
        if sleep_s:
            time.sleep(sleep_s)
        x = batch["x"] + 0.1 * torch.randn_like(batch["x"])
        return torch.nn.functional.mse_loss(model(x), batch["y"])

    return loss_fn


class ToySystem:
    """``exp``: ``train`` (the loop's config) and optional ``toy: {sleep_s}``."""

    def train(self, exp: dict, prepared_dir: Path, out_dir: Path) -> dict:
        toy = exp.get("toy", {})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny model: more threads only contend (and crawl on a busy machine)
        try:
            return run_training(toy_model(exp["train"].get("seed", 0)), ToyDataset(), make_loss(toy.get("sleep_s", 0.0)),
                                exp["train"], out_dir, fingerprint={"model": "toy-mlp", "dim": DIM})
        finally:
            torch.set_num_threads(threads)


def write_exp(path: Path, train: dict, **toy) -> Path:
    """An experiment JSON for ``python -m t2i.train.entry``."""
    path.write_text(json.dumps({"name": "toy", "system": "toy_training:ToySystem", "train": train, "toy": toy}))
    return path
