"""The ``shapes-cnn`` network: a small CNN trained on Shapes ground truth, used as the
feature extractor of FID/KID/IS on the Shapes benchmark (see ``t2i.eval.extractors``).

Labels come from ``annotations.jsonl``: which of the 18 colour–shape pairs an image
contains (multi-label) and how many objects it holds. The penultimate layer (``feat``)
feeds FID/KID/precision-recall; the colour–shape logits feed the Inception Score.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from t2i.checkpoints.hashing import sha256_file, write_sha256sums
from t2i.data.shapes import PALETTE, SHAPES
from t2i.eval.image_folder import iter_batches
from t2i.train.task import OptimizerSpec
from t2i.utils.atomic import atomic_write_json, read_jsonl
from t2i.utils.provenance import write_provenance

PAIRS = tuple(f"{c} {s}" for c in PALETTE for s in SHAPES)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HOLDOUT_MODULUS = 10  # one image in ten (by name hash) is held out for the accuracy report


class ShapesCNN(nn.Module):
    """Three conv stages, a 4x4 spatial pool (keeps layout), a feature layer, two heads.

    ``forward`` takes uint8 images of any size ([B, 3, H, W]) and resizes them to
    ``image_size`` on their device, so callers never resize.
    """

    def __init__(self, image_size: int = 32, widths: tuple[int, ...] = (16, 32, 64), feat_dim: int = 64,
                 max_objects: int = 3):
        super().__init__()
        self.config = {"image_size": image_size, "widths": list(widths), "feat_dim": feat_dim,
                       "max_objects": max_objects, "pairs": list(PAIRS)}
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.feat = nn.Sequential(nn.Linear(c_in * 5, feat_dim), nn.ReLU(inplace=True))
        self.pair_head = nn.Linear(feat_dim, len(PAIRS))
        self.count_head = nn.Linear(feat_dim, max_objects + 1)
        # set after training so that the exported ``feat`` has unit mean per-dimension std on the training
        # images: FID/KID then live on one scale whatever the training run (KID's cubic kernel needs that)
        self.register_buffer("feat_scale", torch.ones(()))

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 255]) [B, 3, H, W] -> float in [0, 255] at ``image_size``."""
        x = x.float()
        size = self.config["image_size"]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float in [-1, 1] at ``image_size``."""
        return self.resize(x) / 127.5 - 1.0

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs for preprocessed images: ``feat`` (scaled), ``logits_unbiased``, ``logits``, ``count_logits``."""
        h = self.body(x)
        pooled = torch.cat([h.amax((2, 3)), F.adaptive_avg_pool2d(h, 2).flatten(1)], 1)
        feat = self.feat(pooled)
        unbiased = feat @ self.pair_head.weight.T
        return {"feat": feat * self.feat_scale, "logits_unbiased": unbiased, "logits": unbiased + self.pair_head.bias,
                "count_logits": self.count_head(feat)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.preprocess(x))


def _network(cfg: dict) -> ShapesCNN:
    return ShapesCNN(image_size=cfg["image_size"], widths=tuple(cfg["widths"]), feat_dim=cfg["feat_dim"],
                     max_objects=cfg["max_objects"])


def load_shapes_classifier(weights_path: str | Path) -> ShapesCNN:
    """A trained ShapesCNN from ``model.safetensors`` and the ``config.json`` beside it (eval mode)."""
    weights_path = Path(weights_path)
    net = _network(json.loads((weights_path.parent / CONFIG_NAME).read_text()))
    net.load_state_dict(load_file(weights_path))
    return net.eval()


def _targets(rows: list[dict], max_objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    presence = torch.zeros(len(rows), len(PAIRS))
    count = torch.zeros(len(rows), dtype=torch.long)
    for i, row in enumerate(rows):
        for obj in row["objects"]:
            presence[i, PAIRS.index(f"{obj['color']} {obj['shape']}")] = 1.0
        count[i] = min(len(row["objects"]), max_objects)
    return presence, count


def _image_path(dataset_dir: Path, name: str) -> Path:
    path = dataset_dir / "images" / name
    return path if path.suffix == ".png" else path.with_name(f"{name}.png")


def _is_heldout(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % HOLDOUT_MODULUS == 0


@torch.no_grad()
def _load_images(net: ShapesCNN, paths: list[Path]) -> torch.Tensor:
    """The images as float [N, 3, S, S] in [0, 255] at the network's size (resized once, not every step)."""
    return torch.cat([net.resize(b) for b in iter_batches(paths, 256)])


@torch.no_grad()
def accuracy(net: ShapesCNN, images: torch.Tensor, presence: torch.Tensor, count: torch.Tensor) -> dict:
    """Exact-set and per-label accuracy of the colour–shape pairs, and count accuracy.

    ``images``: as ``net`` takes them (uint8, or float in [0, 255]).
    """
    net.eval()
    out = [net(b) for b in images.split(256)]
    pred_presence = torch.cat([o["logits"] for o in out]) > 0
    pred_count = torch.cat([o["count_logits"] for o in out]).argmax(1)
    return {
        "pairs_exact_acc": (pred_presence == presence.bool()).all(1).float().mean().item(),
        "pairs_label_acc": (pred_presence == presence.bool()).float().mean().item(),
        "count_acc": (pred_count == count).float().mean().item(),
        "num_images": len(images),
    }


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, presence: torch.Tensor, count: torch.Tensor):
        self.images, self.presence, self.count = images, presence, count

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "presence": self.presence[i], "count": self.count[i]}


class _ShapesTask:
    """ShapesCNN's training for the shared loop: pair presence (BCE) + object count (CE) under random
    left-right flips (from the global RNG), AdamW with a warmup and a cosine decay. ``export`` scales the
    features to unit mean per-dimension std on the training images (``feat_scale``)."""

    def __init__(self, net: ShapesCNN, train_images: torch.Tensor, *, lr: float, steps: int, config: dict,
                 identity: dict):
        self.modules, self.frozen, self.ema = {"net": net}, {}, []
        self.optimizers = {"net": OptimizerSpec([{"params": net.parameters()}], lr=lr, weight_decay=1e-4,
                                                warmup_steps=steps // 10, decay="cosine", total_steps=steps)}
        self.train_images, self.config, self.identity = train_images, config, identity

    def step(self, batch: dict, step: int, ctx) -> dict:
        x = batch["image"]
        flip = torch.rand(len(x), device=x.device) < 0.5  # left-right flips keep every label
        out = ctx.module("net")(torch.where(flip[:, None, None, None], x.flip(-1), x))
        # per-image sum over the 18 pairs: a per-label mean would let the count loss drown it
        loss = (F.binary_cross_entropy_with_logits(out["logits"], batch["presence"], reduction="none").sum(1).mean()
                + F.cross_entropy(out["count_logits"], batch["count"]))
        ctx.backward(loss)
        ctx.optimizer_step("net")
        return {"loss": loss.detach()}

    @torch.no_grad()
    def export(self, weights: dict, out_dir: Path) -> None:
        net = _network(self.config)
        net.load_state_dict(weights["net"])
        net.eval()
        feat = torch.cat([net(b)["feat"] for b in self.train_images.split(256)])
        net.feat_scale.fill_(1 / feat.std(0).mean())
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / WEIGHTS_NAME))
        atomic_write_json(out_dir / CONFIG_NAME, self.config)


def train_shapes_classifier(dataset_dir: str | Path, out_dir: str | Path, *, seed: int = 0, steps: int = 800,
                            image_size: int = 32, batch_size: int = 64, lr: float = 2e-3) -> dict:
    """Train ShapesCNN on a Shapes dataset with the shared training loop; write ``model.safetensors``,
    ``config.json``, ``metrics.json`` (held-out accuracy), ``provenance.json`` and ``SHA256SUMS`` into ``out_dir``.

    It trains on every annotated image (all splits, so the compositional hold-out pairs are
    learned too) except a fixed tenth chosen by name hash, on which it reports accuracy.
    Deterministic on CPU for a given seed. The loop's state lives in ``out_dir/.train`` until the
    end (a killed run resumes from it). Returns the metrics.
    """
    from t2i.train.loop import run_training  # accelerate and tensorboard: not for the extractor's users

    start = time.time()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    work = out_dir / ".train"
    annotations = dataset_dir / "annotations.jsonl"
    rows = read_jsonl(annotations)
    max_objects = max(len(r["objects"]) for r in rows)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ShapesCNN(image_size=image_size, max_objects=max_objects)
    split = {"train": [r for r in rows if not _is_heldout(r["name"])],
             "heldout": [r for r in rows if _is_heldout(r["name"])]}
    if not split["train"] or not split["heldout"]:
        raise ValueError(f"{annotations}: need more images to train and hold out (got {len(rows)})")
    data = {}
    for key, subset in split.items():
        images = _load_images(net, [_image_path(dataset_dir, r["name"]) for r in subset])
        data[key] = (images, *_targets(subset, max_objects))

    train_cfg = {"seed": seed, "steps": steps, "image_size": image_size, "batch_size": batch_size, "lr": lr}
    config = {"architecture": "ShapesCNN", **net.config, "train": train_cfg}
    task = _ShapesTask(net, data["train"][0], lr=lr, steps=steps, config=config,
                       identity={"config": config, "annotations_sha256": sha256_file(annotations)})
    result = run_training(task, _Labelled(*data["train"]), {
        "steps": steps, "batch_size": batch_size, "seed": seed, "mixed_precision": "auto", "compile": False,
        "save_every": 200, "log_every": 50}, work)

    trained = load_shapes_classifier(work / "model" / WEIGHTS_NAME)
    metrics = {"heldout": accuracy(trained, *data["heldout"]), "train": accuracy(trained, *data["train"]),
               "final_loss": result["last_log"]["loss"], "feat_scale": trained.feat_scale.item()}
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_provenance(out_dir, train_cfg, seeds={"train": seed}, wall_time_s=time.time() - start,
                     extra={"dataset_dir": str(dataset_dir)})
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        os.replace(work / "model" / name, out_dir / name)
    write_sha256sums(out_dir, include=[WEIGHTS_NAME, CONFIG_NAME, "metrics.json"])
    shutil.rmtree(work)
    return metrics
