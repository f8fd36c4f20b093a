"""TrainTasks beyond one network and one loss: a GAN, per-group lr, frozen modules, bucketed batches, snapshots."""
from __future__ import annotations

import json
import logging
import shutil
import signal
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from t2i.train.loop import run_training
from t2i.train.schedule import lr_at
from t2i.train.task import EMASpec, OptimizerSpec
from toy_training import (DIM, ToyDataset, ToySystem, assert_same_weights, log_rows, saved_step, single_thread, spawn,
                          toy_model, wait_for)

BASE = {"steps": 12, "batch_size": 8, "seed": 0, "save_every": 100, "log_every": 4}


def train(task, out_dir, dataset=None, **cfg):
    with single_thread():
        return run_training(task, dataset if dataset is not None else ToyDataset(), {**BASE, **cfg}, out_dir)


def safetensors_under(out_dir, *folders):
    return sorted(str(p.relative_to(out_dir)) for folder in folders for p in (out_dir / folder).glob("*.safetensors"))


# -- a GAN: two optimizers, alternating phases, lazy R1, an EMA of G with a ramp ----------------------------------

NOISE, R1_EVERY, R1_GAMMA = 4, 4, 1.0
GAN_CFG = {**BASE, "steps": 40, "batch_size": 16}


class RingDataset(torch.utils.data.Dataset):
    """Points on a ring of 8 Gaussians (the "real" distribution)."""

    def __init__(self, n: int = 128):
        g = torch.Generator().manual_seed(0)
        angle = torch.randint(8, (n,), generator=g) * (torch.pi / 4)
        self.points = torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.points[i]


def ema_ramp(step: int) -> float:
    return min(0.9, step / (step + 10))


class GANTask:
    def __init__(self, cfg: dict, sleep_s: float = 0.0):
        torch.manual_seed(cfg["seed"])
        g = nn.Sequential(nn.Linear(NOISE, 32), nn.LeakyReLU(0.2), nn.Linear(32, 2))
        d = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
        self.modules, self.frozen = {"G": g, "D": d}, {}
        self.optimizers = {"G": OptimizerSpec([{"params": g.parameters()}], lr=2e-3, betas=(0.0, 0.99), kind="adam"),
                           "D": OptimizerSpec([{"params": d.parameters()}], lr=4e-3, betas=(0.0, 0.99), kind="adam",
                                              warmup_steps=8, grad_clip=5.0)}
        self.ema = [EMASpec("G", ramp=ema_ramp)]
        self.compile_modules = ["G"]  # R1's double backward does not go through torch.compile
        self.identity = {"gan": "ring"}
        self.sleep_s = sleep_s

    def step(self, real, step, ctx):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        g, d = ctx.module("G"), ctx.module("D")
        with torch.no_grad():
            fake = g(torch.randn(len(real), NOISE, device=real.device))
        loss_d = F.softplus(d(fake)).mean() + F.softplus(-d(real)).mean()
        ctx.backward(loss_d)
        out = {"loss_d": loss_d.detach()}
        if step % R1_EVERY == 0:  # lazy R1 on the real points
            real = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
            r1 = grad.square().sum(1).mean()
            ctx.backward(r1 * (R1_GAMMA / 2 * R1_EVERY))
            out["r1"] = r1.detach()
        ctx.optimizer_step("D")
        loss_g = F.softplus(-d(g(torch.randn(len(real), NOISE, device=real.device)))).mean()
        ctx.backward(loss_g)
        ctx.optimizer_step("G")
        ctx.zero_grad("D")  # G's backward reached D's parameters too
        return {**out, "loss_g": loss_g.detach()}

    def export(self, weights, out_dir):
        for name, state in weights.items():
            save_file(state, str(out_dir / f"{name}.safetensors"))


class GANSystem:
    def train(self, exp, inputs, out_dir):
        with single_thread():
            task = GANTask(exp["train"], exp.get("toy", {}).get("sleep_s", 0.0))
            return run_training(task, RingDataset(), exp["train"], out_dir, inputs=inputs)


def train_gan(out_dir, **cfg):
    return GANSystem().train({"train": {**GAN_CFG, **cfg}}, {}, out_dir)


GAN_WEIGHTS = ("model/G.safetensors", "model/D.safetensors", "weights/G.raw.safetensors",
               "weights/G.ema-ramp.safetensors", "weights/D.raw.safetensors")


@pytest.fixture(scope="module")
def gan(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "straight"
    train_gan(out)
    return out


def test_gan_logs_its_scalars_and_writes_every_weight_variant(gan):
    rows = log_rows(gan)
    assert [r["step"] for r in rows] == list(range(4, 41, 4))
    assert {"loss_d", "loss_g", "r1", "lr/G", "lr/D"} <= set(rows[0])
    assert rows[0]["lr/D"] == pytest.approx(4e-3 * 4 / 8) and rows[-1]["lr/D"] == 4e-3 and rows[0]["lr/G"] == 2e-3
    assert safetensors_under(gan, "model", "weights") == sorted(GAN_WEIGHTS)
    assert (gan / "model/G.safetensors").read_bytes() == (gan / "weights/G.ema-ramp.safetensors").read_bytes()
    assert (gan / "model/D.safetensors").read_bytes() == (gan / "weights/D.raw.safetensors").read_bytes()
    ema, raw = load_file(gan / "weights/G.ema-ramp.safetensors"), load_file(gan / "weights/G.raw.safetensors")
    assert not torch.equal(ema["0.weight"], raw["0.weight"])


def test_gan_resumes_bit_identically(gan, tmp_path):
    out = tmp_path / "resumed"
    train_gan(out, steps=12)  # a multiple of log_every: the same log rows as a straight run
    assert train_gan(out)["resumed_from"] == 12
    assert_same_weights(out, gan, GAN_WEIGHTS)
    assert [r["loss_g"] for r in log_rows(out)] == [r["loss_g"] for r in log_rows(gan)]


def test_gan_resumes_bit_identically_after_sigterm(gan, tmp_path):
    out = tmp_path / "run"
    proc = spawn(tmp_path, out, {**GAN_CFG, "steps": 10_000}, "run.log", system="test_train_task:GANSystem",
                 sleep_s=0.02)
    wait_for(lambda: "step 4/10000" in (tmp_path / "run.log").read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    stopped = saved_step(out)
    assert 4 <= stopped < GAN_CFG["steps"]
    assert train_gan(out)["resumed_from"] == stopped
    assert_same_weights(out, gan, GAN_WEIGHTS)


# -- one network ``net`` regressing y from x; the variants below change its groups, modules or batches ---------------

class RegressionTask:
    def __init__(self, net: nn.Module, groups: list[dict] | None = None, frozen: dict | None = None, warmup: int = 0):
        self.modules, self.frozen = {"net": net}, frozen or {}
        self.optimizers = {"opt": OptimizerSpec(groups or [{"params": net.parameters()}], lr=0.05, warmup_steps=warmup)}
        self.ema = [EMASpec("net", decays=[0.9])]
        self.identity = {}
        self.exported = None

    def target(self, batch, ctx):
        return batch["y"]

    def step(self, batch, step, ctx):
        loss = F.mse_loss(ctx.module("net")(batch["x"]), self.target(batch, ctx))
        ctx.backward(loss)
        ctx.optimizer_step("opt")
        return {"loss": loss.detach()}

    def export(self, weights, out_dir):
        self.exported = sorted(weights)
        save_file(weights["net"], str(out_dir / "net.safetensors"))


def test_group_lr_mult_scales_the_schedule_and_zero_freezes(tmp_path):
    net = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, DIM))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    groups = [{"params": net[0].parameters()}, {"params": net[2].parameters(), "lr_mult": 0.5},
              {"params": net[4].parameters(), "lr_mult": 0.0}]
    train(RegressionTask(net, groups, warmup=10), tmp_path, steps=6, log_every=1)

    assert [r["lr"] for r in log_rows(tmp_path)] == [lr_at(s, 0.05, 10) for s in range(6)]
    optimizer = torch.load(tmp_path / "state" / "optimizer.bin", weights_only=True)
    assert [g["lr"] for g in optimizer["param_groups"]] == [lr_at(5, 0.05, 10), 0.5 * lr_at(5, 0.05, 10)]
    assert [len(g["params"]) for g in optimizer["param_groups"]] == [2, 2] and len(optimizer["state"]) == 4
    assert all("lr_mult" not in g for g in optimizer["param_groups"])
    assert not any(p.requires_grad for p in net[4].parameters())
    raw = load_file(tmp_path / "weights" / "net.raw.safetensors")
    assert sorted(k for k in raw if torch.equal(raw[k], before[k])) == ["4.bias", "4.weight"]


class DistillTask(RegressionTask):
    """Regress a frozen teacher's outputs."""

    def target(self, batch, ctx):
        return ctx.module("teacher")(batch["x"])


def test_frozen_modules_stay_out_of_state_emas_optimizers_and_weights(tmp_path):
    teacher = nn.Sequential(nn.Linear(DIM, DIM), nn.Dropout(0.5))  # dropout: must run in eval mode
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = DistillTask(toy_model(), frozen={"teacher": teacher})
    train(task, tmp_path)

    state = tmp_path / "state"
    assert sorted(p.name for p in state.glob("model*")) == ["model.safetensors"]
    assert load_file(state / "model.safetensors").keys() == toy_model().state_dict().keys()
    assert all(k.startswith("net/0.9/") for k in load_file(state / "extra.safetensors"))
    optimizer = torch.load(state / "optimizer.bin", weights_only=True)
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(list(toy_model().parameters()))
    assert safetensors_under(tmp_path, "weights") == ["weights/net.ema-0.9.safetensors", "weights/net.raw.safetensors"]
    assert task.exported == ["net"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(teacher.state_dict()[k].cpu(), v) for k, v in teacher_before.items())
    assert log_rows(tmp_path)[-1]["loss"] < log_rows(tmp_path)[0]["loss"]


# -- a system batch sampler: aspect-ratio buckets, per-item augmentation keyed by the batch --------------------------

class BucketDataset(torch.utils.data.Dataset):
    """Even items are 2x4 "landscape" grids, odd ones 4x2 "portrait"; item ``(index, key)`` adds noise drawn
    from a generator seeded by ``key``."""

    def __init__(self, n: int = 40):
        g = torch.Generator().manual_seed(0)
        self.x = [torch.randn(1, *((2, 4) if i % 2 == 0 else (4, 2)), generator=g) for i in range(n)]
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, key = item
        noise = torch.randn(self.x[index].shape, generator=torch.Generator().manual_seed(key))
        return {"x": self.x[index] + 0.1 * noise, "y": self.y[index]}


class BucketSampler:
    """Step ``s`` draws a bucket, its items and their keys from ``(seed, s)``: a pure function of the step."""

    def __init__(self, dataset_size, global_batch, *, rank, world, seed, start, stop):
        self.buckets = [np.arange(0, dataset_size, 2), np.arange(1, dataset_size, 2)]
        self.local = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
        self.global_batch, self.seed, self.start, self.stop = global_batch, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for step in range(self.start, self.stop):
            rng = np.random.default_rng([self.seed, step])
            items = rng.choice(self.buckets[rng.integers(2)], self.global_batch, replace=False)
            keys = rng.integers(2 ** 31, size=self.global_batch)
            yield [(int(i), int(k)) for i, k in zip(items[self.local], keys[self.local])]


class BucketTask(RegressionTask):
    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Sequential(nn.Conv2d(1, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                       nn.Linear(8, 1)))
        self.shapes = set()

    def batch_sampler(self, **kwargs):
        return BucketSampler(**kwargs)

    def step(self, batch, step, ctx):
        self.shapes.add(tuple(batch["x"].shape[-2:]))
        return super().step(batch, step, ctx)


def test_a_bucket_sampler_resumes_bit_identically(tmp_path):
    straight = BucketTask()
    train(straight, tmp_path / "straight", BucketDataset(), steps=16)
    assert straight.shapes == {(2, 4), (4, 2)}  # batches from both buckets, each from one
    train(BucketTask(), tmp_path / "resumed", BucketDataset(), steps=7)
    assert train(BucketTask(), tmp_path / "resumed", BucketDataset(), steps=16)["resumed_from"] == 7
    assert_same_weights(tmp_path / "resumed", tmp_path / "straight",
                        ("model/net.safetensors", "weights/net.raw.safetensors"))


# -- snapshots for post-hoc EMA ------------------------------------------------------------------------------------

SNAP_CFG = {"steps": 20, "batch_size": 16, "lr": 1e-2, "ema_decays": [0.9], "save_every": 10, "log_every": 5,
            "seed": 0, "snapshot_every": 5}


def train_toy(out_dir, **cfg):
    return ToySystem().train({"train": {**SNAP_CFG, **cfg}}, {}, out_dir)


def test_snapshots_every_n_steps_and_resume_drops_later_ones(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    straight, out = tmp_path / "straight", tmp_path / "run"
    train_toy(straight)
    names = [f"net-{s:08d}.safetensors" for s in (5, 10, 15, 20)]
    assert sorted(p.name for p in (straight / "snapshots").iterdir()) == names
    assert (straight / "snapshots" / names[-1]).read_bytes() == (straight / "weights/net.raw.safetensors").read_bytes()

    train_toy(out, steps=10)
    shutil.copy(out / "snapshots" / names[0], out / "snapshots" / "net-00000012.safetensors")  # a killed run's
    assert train_toy(out)["resumed_from"] == 10
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == names
    assert_same_weights(out, straight, [f"snapshots/{n}" for n in names])

    train_toy(out, steps=7, lr=2e-2)  # a fresh start drops every old snapshot
    assert "starting fresh" in caplog.text
    assert [p.name for p in (out / "snapshots").iterdir()] == [names[0]]
    assert json.loads((out / "state" / "meta.json").read_text())["step"] == 7
