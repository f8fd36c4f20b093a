"""JiT-Text (seed 001): pixel-space diffusion transformer conditioned on a frozen LLM.

Unlike the seed's code, the frozen text encoder never runs inside a training step:
``prepare`` pools every training caption once (plus the empty caption used for CFG
dropout) and training reads the cache; sampling encodes each prompt and the empty
prompt once per job.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from t2i.data.captions import CaptionDirDataset
from t2i.data.images import save_png, tensor_to_uint8
from t2i.utils.atomic import atomic_path, atomic_write_json, atomic_write_jsonl
from t2i.utils.compile import compile_if_wanted
from t2i.utils.provenance import config_hash, write_provenance

log = logging.getLogger(__name__)

FEATURES = "text_features.safetensors"
MANIFEST = "manifest.json"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _encoder(exp: dict, pretrained_dir: Path, device: torch.device):
    from t2i.text.encoder import FrozenTextEncoder

    te = exp["text_encoder"]
    dtype = getattr(torch, te["dtype"])
    return FrozenTextEncoder(pretrained_dir, max_length=te["max_length"], device=device, dtype=dtype)


class _CachedTextDataset(torch.utils.data.Dataset):
    """Training images paired with their cached pooled caption features."""

    def __init__(self, prepared_dir: Path):
        manifest = json.loads((prepared_dir / MANIFEST).read_text())
        self.images = CaptionDirDataset(manifest["dataset_dir"], split="train", image_size=manifest["image_size"])
        tensors = load_file(prepared_dir / FEATURES)
        self.features, self.empty = tensors["features"], tensors["empty"]
        self.row = {name: i for i, name in enumerate(manifest["names"])}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = self.images[i]
        return {"image": item["image"], "text": self.features[self.row[item["name"]]]}


class JiTSystem:
    """The ``jit`` system: prepare (cache text features) -> train -> sample."""

    def prepare(self, exp: dict, dataset_dir: Path, pretrained_dir: Path, out_dir: Path) -> None:
        dataset = CaptionDirDataset(dataset_dir, split="train")
        names = [dataset.names[i] for i in range(len(dataset))]
        captions = [dataset.caption(i) for i in range(len(dataset))]
        encoder = _encoder(exp, pretrained_dir, _device())
        log.info("encoding %d captions with %s", len(captions), pretrained_dir)
        features = encoder.encode(captions).float().cpu()
        empty = encoder.encode([""])[0].float().cpu()
        with atomic_path(out_dir / FEATURES) as tmp:
            save_file({"features": features.contiguous(), "empty": empty.contiguous()}, str(tmp))
        atomic_write_json(out_dir / MANIFEST, {
            "dataset_dir": str(Path(dataset_dir).resolve()),
            "image_size": dataset.image_size,
            "names": names,
            "text_dim": int(features.shape[1]),
            "features_hash": config_hash(features.sum(dim=1).tolist()),
        })
        write_provenance(out_dir, {"text_encoder": exp["text_encoder"], "dataset": str(dataset_dir)})

    def train(self, exp: dict, prepared_dir: Path, out_dir: Path) -> None:
        from t2i.diffusion.flow import jit_loss
        from t2i.models import public_config
        from t2i.models.jit import jit_from_preset
        from t2i.train.loop import run_training

        prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
        manifest = json.loads((prepared_dir / MANIFEST).read_text())
        m = exp["model"]
        torch.manual_seed(exp["train"]["seed"])  # initial weights are part of what the seed fixes
        model = jit_from_preset(m["preset"], input_size=manifest["image_size"], text_dim=manifest["text_dim"],
                                proj_dropout=m["proj_dropout"], **m["overrides"])
        dataset = _CachedTextDataset(prepared_dir)
        empty, p_drop = dataset.empty, exp["train"]["cond_dropout"]

        def loss_fn(net, batch):
            text = batch["text"]
            drop = torch.rand(text.shape[0], device=text.device) < p_drop
            text = torch.where(drop[:, None], empty.to(text), text)
            return jit_loss(net, batch["image"], text, P_mean=m["P_mean"], P_std=m["P_std"],
                            noise_scale=m["noise_scale"], t_eps=m["t_eps"])

        network = public_config(model)
        fingerprint = {"model": network, "data": manifest["features_hash"], "names": len(manifest["names"])}
        run_training(model, dataset, loss_fn, exp["train"], out_dir, fingerprint=fingerprint)
        atomic_write_json(out_dir / "model_config.json", {
            "system": "jit", "preset": m["preset"], "network": network, "image_size": manifest["image_size"],
            "text_dim": manifest["text_dim"], "noise_scale": m["noise_scale"], "t_eps": m["t_eps"],
        })

    def sample(self, exp: dict, ckpt_dir: Path, pretrained_dir: Path, prompts: list[dict], out_dir: Path) -> None:
        from t2i.diffusion.flow import sample as ode_sample
        from t2i.models.jit import JiT

        ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
        s = exp["sample"]
        meta = json.loads((ckpt_dir / "model_config.json").read_text())
        device = _device()
        model = JiT.from_config(meta["network"])
        model.load_state_dict(load_file(ckpt_dir / "model.safetensors"))
        compile_if_wanted(model.to(device).eval(), s["compile"], device)
        rows = _expand_prompts(prompts, s["num_images"], s["seed"])
        encoder = _encoder(exp, pretrained_dir, device)
        unique = sorted({r["prompt"] for r in rows})
        table = dict(zip(unique, encoder.encode(unique).float()))
        uncond = encoder.encode([""])[0].float()
        del encoder
        size, channels = meta["image_size"], model.config.in_channels
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
        for start in tqdm(range(0, len(rows), s["gen_bsz"]), desc="sampling", unit="batch"):
            batch = rows[start:start + s["gen_bsz"]]
            noise = torch.stack([
                torch.randn(channels, size, size, generator=torch.Generator().manual_seed(r["seed"])) for r in batch
            ]).to(device)
            cond = torch.stack([table[r["prompt"]] for r in batch]).to(device)
            with torch.no_grad(), autocast:
                images = ode_sample(model, noise, cond, uncond.to(device).expand_as(cond), steps=s["steps"],
                                    method=s["method"], cfg=s["cfg"], interval_min=s["interval_min"],
                                    interval_max=s["interval_max"], t_eps=meta["t_eps"], noise_scale=meta["noise_scale"])
            for r, img in zip(batch, tensor_to_uint8(images)):
                save_png(img, out_dir / r["file"])
        atomic_write_jsonl(out_dir / "index.jsonl", rows)
        write_provenance(out_dir, {"sample": s, "checkpoint": str(ckpt_dir)}, seeds=s["seed"])


def _expand_prompts(prompts: list[dict], num_images: int | None, seed: int) -> list[dict]:
    """One row per image to generate (cycling over the prompts), each with its own seed and file."""
    if not prompts:
        raise ValueError("the prompt set is empty")
    n = num_images or len(prompts)
    return [{"id": prompts[i % len(prompts)]["id"], "prompt": prompts[i % len(prompts)]["prompt"],
             "seed": seed + i, "file": f"{i:06d}.png"} for i in range(n)]
