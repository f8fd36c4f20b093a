"""JiT-Text (seed 001): pixel-space diffusion transformer conditioned on a frozen LLM.

Roles: ``text_encoder`` (prepare, sample), optional ``init`` (train: fine-tune from another
jit experiment's model). Unlike the seed's code, the frozen text encoder never runs inside a
training step: ``prepare`` pools every training caption once (plus the empty caption used for
CFG dropout) and training reads the cache; sampling encodes each prompt and the empty prompt
once per job.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from t2i.data.captions import CaptionDirDataset, to_signed_unit
from t2i.systems.sampling import Generated, inference_autocast, prepare_module, row_noise, run_sampling
from t2i.utils.atomic import atomic_path, atomic_write_json
from t2i.utils.device import default_device

log = logging.getLogger(__name__)

FEATURES = "text_features.safetensors"
MANIFEST = "manifest.json"
NETWORK = "network"


def _encoder(exp: dict, encoder_dir: Path, device: torch.device):
    from t2i.text.encoder import FrozenTextEncoder

    text = exp["text"]
    return FrozenTextEncoder(encoder_dir, max_length=text["max_length"], device=device, dtype=getattr(torch, text["dtype"]))


class _CachedTextDataset(torch.utils.data.Dataset):
    """Training images paired with their cached pooled caption features."""

    def __init__(self, prepared_dir: Path, dataset_dir: Path):
        manifest = json.loads((prepared_dir / MANIFEST).read_text())
        self.images = CaptionDirDataset(dataset_dir, split="train", image_size=manifest["image_size"])
        tensors = load_file(prepared_dir / FEATURES)
        self.features, self.empty = tensors["features"], tensors["empty"]
        row = {name: i for i, name in enumerate(manifest["names"])}
        missing = [n for n in self.images.names if n not in row]
        if missing:
            raise ValueError(f"{prepared_dir}: no cached features for {len(missing)} training images "
                             f"(e.g. {missing[0]}); the dataset changed after prepare")
        self.rows = [row[n] for n in self.images.names]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        """uint8 pixels: the task scales them on its device."""
        return {"image": self.images.pixels(i), "text": self.features[self.rows[i]]}


class JiTTask:
    """The JiT training task: one network, AdamW, EMAs, flow loss with caption dropout."""

    def __init__(self, model, exp: dict, empty: torch.Tensor, meta: dict):
        from t2i.models import public_config
        from t2i.train.optim import adamw_from_train_config, ema_from_train_config

        self.modules, self.frozen = {NETWORK: model}, {}
        self.optimizers = {NETWORK: adamw_from_train_config(model, exp["train"])}
        self.ema = [ema_from_train_config(NETWORK, exp["train"])]
        self.identity = {"network": public_config(model), "model": exp["model"]}
        self.m, self.empty, self.meta = exp["model"], empty, meta

    def step(self, batch: dict, step: int, ctx) -> dict[str, torch.Tensor]:
        from t2i.diffusion.flow import jit_loss

        text, image = batch["text"], batch["image"]
        if image.dtype == torch.uint8:
            image = to_signed_unit(image)
        self.empty = self.empty.to(text)  # copied once: a pageable copy every step would wait for the GPU
        drop = torch.rand(text.shape[0], device=text.device) < self.m["cond_dropout"]
        text = torch.where(drop[:, None], self.empty, text)
        loss = jit_loss(ctx.module(NETWORK), image, text, P_mean=self.m["P_mean"], P_std=self.m["P_std"],
                        noise_scale=self.m["noise_scale"], t_eps=self.m["t_eps"])
        ctx.backward(loss)
        ctx.optimizer_step(NETWORK)
        return {"loss": loss.detach()}

    def export(self, weights: dict[str, dict[str, torch.Tensor]], out_dir: Path) -> None:
        from t2i.models.folder import save_model_folder
        from t2i.models.jit import JiT

        network = JiT.from_config(self.modules[NETWORK].config)
        network.load_state_dict(weights[NETWORK])
        save_model_folder(out_dir, "jit", {NETWORK: network}, self.meta)


class JiTSystem:
    """The ``jit`` system: prepare (cache text features) -> train -> sample."""

    def prepare(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        dataset = CaptionDirDataset(inputs["dataset"], split="train")
        captions = [dataset.caption(i) for i in range(len(dataset))]
        encoder = _encoder(exp, inputs["text_encoder"], default_device())
        log.info("encoding %d captions", len(captions))
        features = encoder.encode(captions).float().cpu()
        empty = encoder.encode([""])[0].float().cpu()
        with atomic_path(out_dir / FEATURES) as tmp:
            save_file({"features": features.contiguous(), "empty": empty.contiguous()}, str(tmp))
        atomic_write_json(out_dir / MANIFEST, {"image_size": dataset.image_size, "names": list(dataset.names),
                                               "text_dim": int(features.shape[1])})

    def train(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from t2i.models.jit import jit_from_preset
        from t2i.train.loop import run_training

        manifest = json.loads((inputs["prepared"] / MANIFEST).read_text())
        m = exp["model"]
        torch.manual_seed(exp["train"]["seed"])  # initial weights are part of what the seed fixes
        model = jit_from_preset(m["preset"], input_size=manifest["image_size"], text_dim=manifest["text_dim"],
                                proj_dropout=m["proj_dropout"], **m["overrides"])
        if "init" in inputs:
            _load_init(model, inputs["init"])
        dataset = _CachedTextDataset(inputs["prepared"], inputs["dataset"])
        meta = {"image_size": manifest["image_size"], "text_dim": manifest["text_dim"],
                "noise_scale": m["noise_scale"], "t_eps": m["t_eps"]}
        run_training(JiTTask(model, exp, dataset.empty, meta), dataset, exp["train"], out_dir, inputs=inputs)

    def sample(self, exp: dict, inputs: dict[str, Path], prompts: list[dict], out_dir: Path) -> None:
        from t2i.diffusion.flow import sample as ode_sample
        from t2i.models.folder import load_component, read_index

        s, device = exp["sample"], default_device()
        meta = read_index(inputs["model"])["meta"]
        model = prepare_module(load_component(inputs["model"], NETWORK, system="jit"), s, device)
        encoder = _encoder(exp, inputs["text_encoder"], device)
        unique = sorted({p["prompt"] for p in prompts})
        table = dict(zip(unique, encoder.encode(unique).float()))
        uncond = encoder.encode([""])[0].float().to(device)
        del encoder
        shape = (model.config.in_channels, meta["image_size"], meta["image_size"])

        def generate_batch(rows: list[dict]) -> Generated:
            cond = torch.stack([table[r["prompt"]] for r in rows]).to(device)
            with inference_autocast(device):
                images = ode_sample(model, row_noise(rows, shape, device), cond, uncond.expand_as(cond),
                                    steps=s["steps"], method=s["method"], cfg=s["cfg"],
                                    interval_min=s["interval_min"], interval_max=s["interval_max"],
                                    t_eps=meta["t_eps"], noise_scale=meta["noise_scale"])
            return Generated(images)

        run_sampling(exp, prompts, out_dir, generate_batch)


def _load_init(model, init_dir: Path) -> None:
    """Start from another jit experiment's network (same architecture, or a clear error)."""
    from t2i.models import public_config
    from t2i.models.folder import load_component

    source = load_component(init_dir, NETWORK, system="jit")
    if public_config(source) != public_config(model):
        diff = {k: (public_config(source).get(k), v) for k, v in public_config(model).items()
                if public_config(source).get(k) != v}
        raise ValueError(f"inputs.init: {init_dir} holds a different network (init vs this experiment: {diff})")
    model.load_state_dict(source.state_dict())
    log.info("initialised the network from %s", init_dir)
