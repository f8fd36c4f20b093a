"""Pixel-space SDXL (seed 004): SDXL's U-Net body between a patch encoder and decoder, trained on pixels.

This module wires the original's full-training stage (``train.py``): x0 prediction on
``x_t = (1 - t) x0 + t e``, logit-normal or uniform t, x0 or velocity loss, AdamW over two parameter
groups (the SDXL body at ``lr_sdxl_unet_body``, the patch encoder/decoder at ``lr``; a group at lr 0 is
frozen), aspect-ratio buckets with tag dropout (``t2i.data.pixel_sdxl_meta``), and the x0 Euler sampler
with CFG (``t2i.diffusion.pixel_sdxl``).

Roles ``text_encoder_1`` and ``text_encoder_2`` (train, sample): transformers CLIP folders (a
``CLIPModel`` folder works); SDXL's conditioning is both encoders' penultimate hidden states
concatenated (context), TE2's pooled projection (``text_embeds``) and the items' ``time_ids``. The
encoders run inside the training step (captions change with every tag dropout draw), frozen unless
``lr_text_encoder1/2`` > 0; trained ones are saved in the model folder and sampled with.

``prepare`` writes ``metadata.json`` (the original's format: tags from a Shapes dataset's
``annotations.jsonl``, or from a caption-dir dataset's one comma-separated caption line per image) and
``summary.json`` (the bucket rule, the buckets and their counts); ``train`` reads both.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

import torch

from t2i.data.pixel_sdxl_meta import (BucketRule, PixelSDXLDataset, read_metadata, write_caption_metadata,
                                      write_shapes_metadata)
from t2i.systems.sampling import Generated, inference_autocast, prepare_module, row_noise, run_sampling
from t2i.utils.atomic import atomic_write_json
from t2i.utils.device import default_device

log = logging.getLogger(__name__)

SYSTEM = "pixel_sdxl"
METADATA, SUMMARY = "metadata.json", "summary.json"
UNET, TEXT = "unet", "text_encoders"
ENCODER_ROLES = ("text_encoder_1", "text_encoder_2")  # also the model folder's components when they train


def _encoder_folders(folder: Path, suffix: str) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of one of SDXL's text encoders: a diffusers pipeline folder's
    ``text_encoder{suffix}/`` and ``tokenizer{suffix}/``, or else the folder itself (a transformers CLIP folder)."""
    if (folder / "model_index.json").is_file():
        return folder / f"text_encoder{suffix}", folder / f"tokenizer{suffix}"
    return folder, folder


def _text_model(cls, folder: Path):
    """``cls.from_pretrained(folder)``, which may be a whole ``CLIPModel`` folder: its vision tower is left
    out without transformers' per-tensor report; a missing text tensor is an error."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{folder}: no {cls.__name__} weights for {len(missing)} tensors, e.g. {missing[:3]}")
    return model


class SDXLTextEncoders(torch.nn.Module):
    """SDXL's two CLIP text encoders: captions -> ``(context [B, L, D1 + D2], pooled [B, P])``.

    Captions are padded to ``max_length`` and encoded without an attention mask, as SDXL does; the
    context is both encoders' penultimate hidden states concatenated, the pooled vector TE2's
    ``text_embeds``.
    """

    def __init__(self, te1, tokenizer1, te2, tokenizer2, max_length: int):
        super().__init__()
        self.te1, self.te2 = te1, te2
        self.tokenizers = (tokenizer1, tokenizer2)
        self.max_length = max_length
        self.context_dim = te1.config.hidden_size + te2.config.hidden_size
        self.pooled_dim = te2.config.projection_dim

    @classmethod
    def load(cls, dir1: Path, dir2: Path, max_length: int | None) -> "SDXLTextEncoders":
        """``CLIPTextModel`` + tokenizer from ``dir1``, ``CLIPTextModelWithProjection`` + tokenizer from ``dir2``:
        transformers CLIP folders, or a diffusers SDXL pipeline folder (its ``text_encoder``/``tokenizer``
        and ``text_encoder_2``/``tokenizer_2``).

        ``max_length`` None: the shorter tokenizer's ``model_max_length``; it may not exceed either
        encoder's ``max_position_embeddings``.
        """
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        (model1, tok1), (model2, tok2) = _encoder_folders(Path(dir1), ""), _encoder_folders(Path(dir2), "_2")
        te1, te2 = _text_model(CLIPTextModel, model1), _text_model(CLIPTextModelWithProjection, model2)
        tokenizers = [AutoTokenizer.from_pretrained(d, local_files_only=True) for d in (tok1, tok2)]
        if max_length is None:
            max_length = min(t.model_max_length for t in tokenizers)
        for role, te, tok in (("text_encoder_1", te1, tokenizers[0]), ("text_encoder_2", te2, tokenizers[1])):
            if max_length > te.config.max_position_embeddings:
                raise ValueError(f"text.max_length {max_length} exceeds {role}'s max_position_embeddings "
                                 f"{te.config.max_position_embeddings}")
            if tok.pad_token is None:
                raise ValueError(f"inputs.{role}: its tokenizer has no pad token (SDXL pads every caption)")
        return cls(te1.eval().requires_grad_(False), tokenizers[0], te2.eval().requires_grad_(False), tokenizers[1],
                   max_length)

    def _ids(self, which: int, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizers[which](list(captions), padding="max_length", max_length=self.max_length,
                                     truncation=True, return_tensors="pt")["input_ids"]
        return ids.to(next(self.parameters()).device)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            h1 = self.te1(input_ids=self._ids(0, captions), output_hidden_states=True).hidden_states[-2]
            out2 = self.te2(input_ids=self._ids(1, captions), output_hidden_states=True)
        return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds

    def save_pretrained(self, out_dir: Path, weights: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
        """Both encoders with their tokenizers as CLIP folders ``out_dir/text_encoder_{1,2}`` (``weights``: a
        state dict of this module to save instead of its own); returns the component classes for the index."""
        components = {}
        for i, (role, te) in enumerate(((ENCODER_ROLES[0], self.te1), (ENCODER_ROLES[1], self.te2))):
            prefix = f"te{i + 1}."
            state = None if weights is None else {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            te.save_pretrained(Path(out_dir) / role, state_dict=state)
            self.tokenizers[i].save_pretrained(Path(out_dir) / role)
            components[role] = f"{type(te).__module__}:{type(te).__qualname__}"
        return components


def _is_shapes(dataset: Path) -> bool:
    """A Shapes dataset: its ``annotations.jsonl`` rows list the objects drawn."""
    path = dataset / "annotations.jsonl"
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    return bool(first.strip()) and "objects" in json.loads(first)


def text_encoders_train(train: dict) -> bool:
    return train["lr_text_encoder1"] > 0 or train["lr_text_encoder2"] > 0


def optimizer_spec(model, train: dict, encoders: SDXLTextEncoders | None = None):
    """The original's one AdamW: patch encoder/decoder at ``lr``, ``body.*`` at ``lr_sdxl_unet_body``, and with
    ``encoders`` TE1 and TE2 at ``lr_text_encoder1/2`` (as ``lr_mult`` of the largest; a group at 0 is frozen
    and left out of the optimizer)."""
    from t2i.train.task import OptimizerSpec

    lrs = [train["lr"], train["lr_sdxl_unet_body"]]
    if encoders is not None:
        lrs += [train["lr_text_encoder1"], train["lr_text_encoder2"]]
    peak = max(lrs)
    if max(lrs[:2]) == 0:
        raise ValueError("train.lr and train.lr_sdxl_unet_body are both 0: nothing of the U-Net would train")
    named = list(model.named_parameters())
    params = [[p for n, p in named if not n.startswith("body.")], [p for n, p in named if n.startswith("body.")]]
    if encoders is not None:
        params += [list(encoders.te1.parameters()), list(encoders.te2.parameters())]
    groups = [{"params": group, "lr_mult": lr / peak} for group, lr in zip(params, lrs)]
    return OptimizerSpec(groups=groups, lr=peak, betas=tuple(train["betas"]), eps=train["eps"],
                         weight_decay=train["weight_decay"], warmup_steps=train["warmup_steps"],
                         grad_clip=train["grad_clip"], kind=train["optimizer"])


class PixelSDXLTask:
    """The full-training step: encode the batch's captions, noise the images, predict x0, one AdamW step."""

    def __init__(self, model, encoders: SDXLTextEncoders, exp: dict, meta: dict):
        from t2i.models import public_config
        from t2i.train.task import EMASpec

        t, self.loss = exp["train"], exp["loss"]
        if text_encoders_train(t):  # the original trains them in the U-Net's optimizer, at their own rates
            encoders.requires_grad_(True)  # the loop freezes the one whose lr is 0 (its group is left out)
            self.modules, self.frozen = {UNET: model, TEXT: encoders}, {}
            self.optimizers = {UNET: optimizer_spec(model, t, encoders)}
        else:
            self.modules, self.frozen = {UNET: model}, {TEXT: encoders}
            self.optimizers = {UNET: optimizer_spec(model, t)}
        self.ema = [EMASpec(UNET, decays=list(t["ema_decays"]))] if t["ema_decays"] else []
        self.accumulate = t["accumulate"]
        self.identity = {"unet": public_config(model), "loss": self.loss, "data": exp["data"],
                         "text_max_length": encoders.max_length}
        self.meta = meta

    def step(self, batch: dict, step: int, ctx) -> dict[str, torch.Tensor]:
        from t2i.diffusion.pixel_sdxl import add_noise, model_timesteps, sample_timesteps, velocity_loss, x0_loss

        L, x0, time_ids, captions = self.loss, batch["image"], batch["time_ids"], batch["caption"]
        encode = ctx.module(TEXT)
        # Frozen encoders: once for the whole batch. Trained ones: per micro-batch, as each backward frees its graph.
        whole = None if TEXT in self.modules else encode(captions)
        n = x0.shape[0]
        t = sample_timesteps(n, uniform=L["timesteps"] == "uniform", mean=L["logit_mean"], std=L["logit_std"],
                             device=x0.device)
        x_t = add_noise(x0, torch.randn_like(x0), t, L["noise_scale"])
        unet, total, size = ctx.module(UNET), torch.zeros((), device=x0.device), -(-n // self.accumulate)
        for start in range(0, n, size):  # micro-batches: the gradient of the whole batch's mean loss
            part = slice(start, start + size)
            context, pooled = encode(captions[part]) if whole is None else (whole[0][part], whole[1][part])
            pred = unet(x_t[part], model_timesteps(t[part]), context, pooled, time_ids[part])
            loss = velocity_loss(pred, x0[part], t[part]) if L["objective"] == "velocity" else x0_loss(pred, x0[part])
            weight = pred.shape[0] / n
            ctx.backward(loss * weight)
            total += loss.detach() * weight
        ctx.optimizer_step(UNET)
        return {"loss": total}

    def export(self, weights: dict[str, dict[str, torch.Tensor]], out_dir: Path) -> None:
        from t2i.models.folder import save_model_folder
        from t2i.models.pixel_sdxl import PixelSDXL

        model = PixelSDXL.from_config(self.modules[UNET].config)
        model.load_state_dict(weights[UNET])
        saved = self.modules[TEXT].save_pretrained(out_dir, weights[TEXT]) if TEXT in self.modules else {}
        save_model_folder(out_dir, SYSTEM, {UNET: model}, self.meta, saved_components=saved)


def encoder_folders(inputs: dict[str, Path]) -> list[Path]:
    """The text encoders a model was trained with: its folder's own where they trained with it, else the roles'."""
    model = Path(inputs["model"])
    return [model / role if (model / role).is_dir() else Path(inputs[role]) for role in ENCODER_ROLES]


def _check_conditioning(model, encoders: SDXLTextEncoders) -> None:
    """The U-Net's context and pooled widths must be the encoders'."""
    if (model.context_dim, model.pooled_dim) != (encoders.context_dim, encoders.pooled_dim):
        raise ValueError(f"the model takes context {model.context_dim} / pooled {model.pooled_dim} wide, the text "
                         f"encoders give {encoders.context_dim} / {encoders.pooled_dim}")


def load_initial_weights(model, source: Path) -> str:
    """Fill ``model`` from the ``init`` role's folder, strictly; returns what it was.

    - a t2i ``pixel_sdxl`` model folder (an earlier stage's experiment, or a converted original checkpoint):
      its whole U-Net model, which must have the same architecture (text encoders come from the roles);
    - a diffusers SDXL folder (``unet/`` inside, e.g. the stabilityai/stable-diffusion-xl-base-1.0 snapshot) or
      a ``UNet2DConditionModel`` folder: the U-Net's body (the patch encoder/decoder keep their initialisation);
    - a folder holding one SDXL single-file ``.safetensors`` (``model.diffusion_model.*``): the same, converted.
    """
    from safetensors.torch import load_file

    from t2i.models.folder import INDEX, load_component

    if (source / INDEX).is_file():
        model.load_state_dict(load_component(source, UNET, system=SYSTEM).state_dict(), strict=True)
        return "pixel_sdxl model folder"
    for folder in (source / "unet", source):
        if (folder / "config.json").is_file():
            from diffusers import UNet2DConditionModel

            model.load_sdxl_unet(UNet2DConditionModel.from_pretrained(folder, local_files_only=True).state_dict())
            return "diffusers U-Net (body)"
    files = sorted(source.glob("*.safetensors"))
    if len(files) == 1:
        model.load_sdxl_unet(load_file(files[0]))
        return "SDXL single-file checkpoint (body)"
    raise ValueError(f"inputs.init: {source} is neither a pixel_sdxl model folder, a diffusers U-Net folder "
                     f"(config.json, or unet/config.json) nor one SDXL single-file .safetensors")


def average_snapshots(settings: dict, source: Path, out_dir: Path, inputs: dict[str, Path]) -> None:
    """Post-hoc EMA (the original's ``post_hoc_ema.py``, as a stage): the raw snapshots that another
    experiment's training kept (``train/snapshots/unet-<step>.safetensors`` beside its model folder
    ``source``, and ``text_encoders-<step>`` where its text encoders trained), averaged by ``settings``
    (``mode`` geometric with ``mu``, or power with ``sigma_rel``; :mod:`t2i.diffusion.posthoc_ema`),
    written as ``out_dir/model`` with that model's config and meta."""
    from safetensors.torch import load_file

    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.diffusion.posthoc_ema import posthoc_ema_weights, weighted_average
    from t2i.models.folder import read_index, save_model_folder
    from t2i.models.pixel_sdxl import PixelSDXL
    from t2i.train.loop import MODEL, SNAPSHOTS, snapshot_path, snapshot_step
    from t2i.utils.atomic import atomic_dir
    from t2i.utils.provenance import write_provenance

    files = sorted((source.parent / SNAPSHOTS).glob(f"{UNET}-*.safetensors"))
    if not files:
        raise ValueError(f"inputs.snapshots: {source.parent / SNAPSHOTS} holds no {UNET}-<step>.safetensors "
                         f"(that experiment needs train.snapshot_every > 0)")
    steps = [snapshot_step(f) for f in files]
    mode = settings["mode"]
    value = settings["mu"] if mode == "geometric" else settings["sigma_rel"]
    weights = posthoc_ema_weights(steps, mode, value)
    index = read_index(source)
    if index["system"] != SYSTEM:
        raise ValueError(f"inputs.snapshots: {source} is a {index['system']} model, not {SYSTEM}")
    with torch.device("meta"):  # every tensor comes from the average
        model = PixelSDXL.from_config(PixelSDXL.load_config(source / UNET))
    model.load_state_dict(weighted_average((load_file(f) for f in files), weights), assign=True)
    record = {"mode": mode, "value": value, "snapshot_steps": steps, "weights": weights}
    with atomic_dir(out_dir / MODEL) as tmp:
        saved = {}
        if any(name in ENCODER_ROLES for name in index["components"]):  # trained text encoders: averaged the same way
            text_files = [snapshot_path(source.parent, TEXT, step) for step in steps]
            missing = [f.name for f in text_files if not f.is_file()]
            if missing:
                raise ValueError(f"inputs.snapshots: trained text encoders but no snapshot {', '.join(missing[:3])}")
            encoders = SDXLTextEncoders.load(*(source / name for name in ENCODER_ROLES), index["meta"]["text_max_length"])
            saved = encoders.save_pretrained(tmp, weighted_average((load_file(f) for f in text_files), weights))
        save_model_folder(tmp, SYSTEM, {UNET: model}, {**index["meta"], "posthoc_ema": record}, saved_components=saved)
        write_provenance(tmp, {"posthoc_ema": settings, "inputs": {k: str(v) for k, v in inputs.items()}},
                         extra={"averaged": record})
        write_sha256sums(tmp)


class PixelSDXLSystem:
    """The ``pixel_sdxl`` system: prepare (metadata JSON) -> train (full training) -> sample (x0 Euler + CFG)."""

    def prepare(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        dataset, path = Path(inputs["dataset"]), Path(out_dir) / METADATA
        if _is_shapes(dataset):
            source = "shapes annotations"
            write_shapes_metadata(dataset, path)
        else:
            source = "caption lines"
            write_caption_metadata(dataset, path)
        p = exp["prepare"]
        rule = BucketRule(multiple=p["bucket_multiple"], max_pixels=p["max_pixels"], min_pixels=p["min_pixels"])
        meta = read_metadata(path, rule=rule)
        atomic_write_json(Path(out_dir) / SUMMARY, {"tags_from": source, "rule": dataclasses.asdict(rule),
                                                    **meta.summary()})

    def train(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from t2i.models.pixel_sdxl import pixel_sdxl_from_preset
        from t2i.train.loop import TRAIN_DEFAULTS, run_training

        if "snapshots" in inputs:
            average_snapshots(exp["posthoc_ema"], Path(inputs["snapshots"]), Path(out_dir), inputs)
            return

        t, m, d = exp["train"], exp["model"], exp["data"]
        summary = json.loads((inputs["prepared"] / SUMMARY).read_text(encoding="utf-8"))
        metadata = read_metadata(inputs["prepared"] / METADATA, rule=BucketRule(**summary["rule"]))
        dataset = PixelSDXLDataset(metadata, seed=t["seed"], caption_drop=d["caption_drop"], max_drop=d["tag_drop"],
                                   min_tags=d["min_tags"])
        encoders = SDXLTextEncoders.load(inputs["text_encoder_1"], inputs["text_encoder_2"], exp["text"]["max_length"])
        torch.manual_seed(t["seed"])  # initial weights are part of what the seed fixes
        model = pixel_sdxl_from_preset(m["preset"], context_dim=encoders.context_dim, pooled_dim=encoders.pooled_dim,
                                       **m["overrides"])
        bad = [f"{w}x{h}" for w, h in metadata.buckets if w % model.size_multiple or h % model.size_multiple]
        if bad:
            raise ValueError(f"buckets {', '.join(bad)} are not multiples of the model's {model.size_multiple} px "
                             f"(patch x downsampling); set prepare.bucket_multiple to a multiple of it")
        if "init" in inputs:
            log.info(f"initial weights from {inputs['init']}: {load_initial_weights(model, Path(inputs['init']))}")
        if t["gradient_checkpointing"]:
            model.enable_gradient_checkpointing()
        (w, h), _ = Counter(metadata.buckets[b] for b in metadata.bucket_of).most_common(1)[0]
        meta = {"image_size": [h, w], "noise_scale": exp["loss"]["noise_scale"], "text_max_length": encoders.max_length}
        task = PixelSDXLTask(model, encoders, exp, meta)
        task.batch_sampler = dataset.batch_sampler
        run_training(task, dataset, {k: t[k] for k in TRAIN_DEFAULTS}, out_dir, inputs=inputs)

    def sample(self, exp: dict, inputs: dict[str, Path], prompts: list[dict], out_dir: Path) -> None:
        from t2i.diffusion.pixel_sdxl import FlowX0EulerScheduler
        from t2i.diffusion.pixel_sdxl import sample as x0_sample
        from t2i.models.folder import load_component, read_index

        s, device = exp["sample"], default_device()
        meta = read_index(inputs["model"])["meta"]
        model = load_component(inputs["model"], UNET, system=SYSTEM)
        height, width = s["size"] or meta["image_size"]
        model.check_size(height, width)
        encoders = SDXLTextEncoders.load(*encoder_folders(inputs), meta["text_max_length"])
        _check_conditioning(model, encoders)
        model, encoders = prepare_module(model, s, device), encoders.to(device)
        scheduler = FlowX0EulerScheduler(s["schedule"], s["flow_shift"])
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device)
        context, pooled = encoders([""])
        uncond = {"encoder_hidden_states": context, "text_embeds": pooled, "time_ids": time_ids}

        def generate_batch(rows: list[dict]) -> Generated:
            context, pooled = encoders([r["prompt"] for r in rows])
            cond = {"encoder_hidden_states": context, "text_embeds": pooled, "time_ids": time_ids.expand(len(rows), -1)}
            with inference_autocast(device):
                images = x0_sample(model, row_noise(rows, (3, height, width), device), cond, uncond,
                                   scheduler=scheduler, num_inference_steps=s["steps"], cfg_scale=s["cfg"],
                                   noise_scale=meta["noise_scale"])
            return Generated(images)

        run_sampling(exp, prompts, out_dir, generate_batch)
