"""The ``shapes-cnn`` network: a small CNN trained on Shapes ground truth, used as the
feature extractor of FID/KID/IS on the Shapes benchmark (see ``t2i.eval.extractors``).

Labels come from ``annotations.jsonl``: which of the 18 colour–shape pairs an image
contains (multi-label) and how many objects it holds. The penultimate layer (``feat``)
feeds FID/KID/precision-recall; the colour–shape logits feed the Inception Score.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from t2i.data.shapes import PALETTE, SHAPES
from t2i.eval.image_folder import iter_batches
from t2i.utils.atomic import atomic_path, atomic_write_json, read_jsonl
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

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float in [-1, 1] at ``image_size``."""
        x = x.float()
        size = self.config["image_size"]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x / 127.5 - 1.0

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


def load_shapes_classifier(weights_path: str | Path) -> ShapesCNN:
    """A trained ShapesCNN from ``model.safetensors`` and the ``config.json`` beside it (eval mode)."""
    weights_path = Path(weights_path)
    cfg = json.loads((weights_path.parent / CONFIG_NAME).read_text())
    net = ShapesCNN(image_size=cfg["image_size"], widths=tuple(cfg["widths"]), feat_dim=cfg["feat_dim"],
                    max_objects=cfg["max_objects"])
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
    return torch.cat([net.preprocess(b) for b in iter_batches(paths, 256)])


@torch.no_grad()
def accuracy(net: ShapesCNN, images: torch.Tensor, presence: torch.Tensor, count: torch.Tensor) -> dict:
    """Exact-set and per-label accuracy of the colour–shape pairs, and count accuracy."""
    net.eval()
    out = [net.heads(b) for b in images.split(256)]
    pred_presence = torch.cat([o["logits"] for o in out]) > 0
    pred_count = torch.cat([o["count_logits"] for o in out]).argmax(1)
    return {
        "pairs_exact_acc": (pred_presence == presence.bool()).all(1).float().mean().item(),
        "pairs_label_acc": (pred_presence == presence.bool()).float().mean().item(),
        "count_acc": (pred_count == count).float().mean().item(),
        "num_images": len(images),
    }


def train_shapes_classifier(dataset_dir: str | Path, out_dir: str | Path, *, seed: int = 0, steps: int = 800,
                            image_size: int = 32, batch_size: int = 64, lr: float = 2e-3) -> dict:
    """Train ShapesCNN on a Shapes dataset; write ``model.safetensors``, ``config.json``,
    ``metrics.json`` (held-out accuracy) and ``provenance.json`` into ``out_dir``.

    It trains on every annotated image (all splits, so the compositional hold-out pairs are
    learned too) except a fixed tenth chosen by name hash, on which it reports accuracy.
    Deterministic on CPU for a given seed. Returns the metrics.
    """
    start = time.time()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    rows = read_jsonl(dataset_dir / "annotations.jsonl")
    max_objects = max(len(r["objects"]) for r in rows)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ShapesCNN(image_size=image_size, max_objects=max_objects)
    split = {"train": [r for r in rows if not _is_heldout(r["name"])],
             "heldout": [r for r in rows if _is_heldout(r["name"])]}
    if not split["train"] or not split["heldout"]:
        raise ValueError(f"{dataset_dir}/annotations.jsonl: need more images to train and hold out (got {len(rows)})")
    data = {}
    for key, subset in split.items():
        images = _load_images(net, [_image_path(dataset_dir, r["name"]) for r in subset])
        data[key] = (images, *_targets(subset, max_objects))

    images, presence, count = data["train"]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    for _ in tqdm(range(steps), desc="shapes-cnn", unit="step", mininterval=5):
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        x = images[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5  # left-right flips keep every label
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        out = net.heads(x)
        # per-image sum over the 18 pairs: a per-label mean would let the count loss drown it
        loss = (F.binary_cross_entropy_with_logits(out["logits"], presence[idx], reduction="none").sum(1).mean()
                + F.cross_entropy(out["count_logits"], count[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    net.eval()
    with torch.no_grad():
        feat = torch.cat([net.heads(b)["feat"] for b in images.split(256)])
        net.feat_scale.fill_(1 / feat.std(0).mean())
    metrics = {"heldout": accuracy(net, *data["heldout"]), "train": accuracy(net, *data["train"]),
               "final_loss": loss.item(), "feat_scale": net.feat_scale.item()}
    train_cfg = {"seed": seed, "steps": steps, "image_size": image_size, "batch_size": batch_size, "lr": lr}
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_provenance(out_dir, train_cfg, seeds={"train": seed}, wall_time_s=time.time() - start,
                     extra={"dataset_dir": str(dataset_dir)})
    atomic_write_json(out_dir / CONFIG_NAME, {"architecture": "ShapesCNN", **net.config, "train": train_cfg})
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    return metrics
