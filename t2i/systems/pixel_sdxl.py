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
from t2i.latent.sdxl import LatentSDXLTeacher
from t2i.systems.sampling import Generated, inference_autocast, prepare_module, row_noise, run_sampling
from t2i.text.sdxl_encoders import ENCODER_ROLES, SDXLTextEncoders
from t2i.train.optim import adamw_spec, micro_batches
from t2i.utils.atomic import atomic_write_json
from t2i.utils.device import default_device

log = logging.getLogger(__name__)

SYSTEM = "pixel_sdxl"
METADATA, SUMMARY = "metadata.json", "summary.json"
UNET, TEXT, TEACHER, LPIPS_NAME = "unet", "text_encoders", "teacher", "lpips"
LPIPS_ROLES = ("lpips_backbone", "lpips_heads")  # torchvision's vgg16-397923af.pth, lpips' weights/v0.1/vgg.pth


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
    return adamw_spec([{"params": group, "lr_mult": lr / peak} for group, lr in zip(params, lrs)], peak, train)


def lpips_term(lpips, pred: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The original's LPIPS term: LPIPS (VGG) of the clamped prediction and the target, both bilinearly
    halved, weighted per image by ``1 - t`` and averaged."""
    import torch.nn.functional as F

    half = [F.interpolate(x.clamp(-1, 1), scale_factor=0.5, mode="bilinear", align_corners=False) for x in (pred, x0)]
    return ((1 - t.float()) * lpips(*half)).mean()


def load_lpips(inputs: dict[str, Path]):
    """LPIPS from the roles' two files (each role's folder holds one ``.pth``: a fetched asset)."""
    from t2i.models.lpips import LPIPS

    missing = [r for r in LPIPS_ROLES if r not in inputs]
    if missing:
        raise ValueError(f"loss.lpips_weight > 0 needs inputs.{' and inputs.'.join(missing)} (the LPIPS weights, "
                         f"fetched as assets; see configs/pixel_sdxl.yaml)")
    files = []
    for role in LPIPS_ROLES:
        found = sorted(Path(inputs[role]).glob("*.pth"))
        if len(found) != 1:
            raise ValueError(f"inputs.{role}: {inputs[role]} holds {len(found)} .pth files, not one")
        files += found
    return LPIPS.from_files(*files)


class PixelSDXLTask:
    """The full-training step: encode the batch's captions, noise the images, predict x0, one AdamW step."""

    def __init__(self, model, encoders: SDXLTextEncoders, exp: dict, meta: dict, lpips=None):
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
        if lpips is not None:
            self.frozen[LPIPS_NAME] = lpips
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
        autocast = ctx.accelerator.autocast  # for the frozen modules, which are not prepared
        if TEXT not in self.modules:
            with autocast():
                whole = encode(captions)
        else:
            whole = None
        n = x0.shape[0]
        t = sample_timesteps(n, uniform=L["timesteps"] == "uniform", mean=L["logit_mean"], std=L["logit_std"],
                             device=x0.device)
        x_t = add_noise(x0, torch.randn_like(x0), t, L["noise_scale"])
        unet = ctx.module(UNET)
        totals = {"loss": torch.zeros((), device=x0.device)}
        if L["lpips_weight"] > 0:
            totals["loss_lpips"] = torch.zeros((), device=x0.device)
        for part, weight in micro_batches(n, self.accumulate):
            context, pooled = encode(captions[part]) if whole is None else (whole[0][part], whole[1][part])
            pred = unet(x_t[part], model_timesteps(t[part]), context, pooled, time_ids[part])
            loss = velocity_loss(pred, x0[part], t[part]) if L["objective"] == "velocity" else x0_loss(pred, x0[part])
            terms = {"loss": loss}
            if L["lpips_weight"] > 0:
                with autocast():
                    terms["loss_lpips"] = lpips_term(ctx.module(LPIPS_NAME), pred, x0[part], t[part])
                loss = loss + L["lpips_weight"] * terms["loss_lpips"]
            ctx.backward(loss * weight)
            for k, v in terms.items():
                totals[k] += v.detach() * weight
        ctx.optimizer_step(UNET)
        return totals

    def export(self, weights: dict[str, dict[str, torch.Tensor]], out_dir: Path) -> None:
        from t2i.models.folder import save_model_folder
        from t2i.models.pixel_sdxl import PixelSDXL

        model = PixelSDXL.from_config(self.modules[UNET].config)
        model.load_state_dict(weights[UNET])
        saved = self.modules[TEXT].save_pretrained(out_dir, weights[TEXT]) if TEXT in self.modules else {}
        save_model_folder(out_dir, SYSTEM, {UNET: model}, self.meta, saved_components=saved)


class PixelSDXLDistillTask:
    """One pass of the original's ``train_encoder_decoder_distillation.py``: the patch ``encoder`` learns the
    latent teacher's features at the cut from noisy pixels, or the patch ``decoder`` learns clean pixels from
    them; nothing else trains (the body is not run).

    Teacher and student see the same images at the same timestep: the student ``x_t = (1 - t) x0 + t e`` (its
    body's timestep ``t * 999``), the teacher its own forward process at ``tau = round(t * 999)`` on the VAE
    latents of the same ``x0`` (the original feeds the teacher clean latents); the two schedules' noise levels
    differ, as the body's time embedding is the teacher's. The teacher is conditioned with the experiment's text
    encoders (SDXL's own, in the SDXL configs) and runs under the training's autocast. Settings of full
    training that a pass would ignore (text encoder or EMA learning, LPIPS, the velocity loss) are refused.
    """

    def __init__(self, model, encoders: SDXLTextEncoders, teacher, exp: dict, meta: dict):
        from t2i.models import public_config
        from t2i.models.pixel_sdxl import CUTS, text_widths

        t, self.loss, self.part = exp["train"], exp["loss"], exp["distill"]["part"]
        ignored = {"train.lr_text_encoder1": t["lr_text_encoder1"] > 0, "train.lr_text_encoder2": t["lr_text_encoder2"] > 0,
                   "train.ema_decays": bool(t["ema_decays"]), "loss.lpips_weight": self.loss["lpips_weight"] > 0,
                   "loss.objective: velocity": self.loss["objective"] != "x0"}
        if any(ignored.values()):
            raise ValueError(f"a distillation pass (inputs.teacher) trains the patch {self.part} on an MSE alone; "
                             f"remove {', '.join(k for k, v in ignored.items() if v)}")
        widths = text_widths(teacher.unet.config)
        if widths != (encoders.context_dim, encoders.pooled_dim):
            raise ValueError(f"inputs.teacher takes context {widths[0]} / pooled {widths[1]} wide, "
                             f"inputs.text_encoder_1/2 give {encoders.context_dim} / {encoders.pooled_dim}")
        self.model, self.meta, self.accumulate = model, meta, t["accumulate"]
        self.removed_levels = CUTS[model.config.base_resolution]
        factor = teacher.vae_factor * 2 ** self.removed_levels
        if factor != model.config.patch_size:
            raise ValueError(f"inputs.teacher: its VAE (x{teacher.vae_factor}) and the cut's {self.removed_levels} "
                             f"level(s) put the cut at 1/{factor} of the image; the patch size is "
                             f"{model.config.patch_size}")
        self.name = f"patch_{self.part}"
        self.modules, self.frozen, self.ema = {self.name: getattr(model, self.name)}, {TEXT: encoders, TEACHER: teacher}, []
        self.optimizers = {self.name: adamw_spec([{"params": list(self.modules[self.name].parameters())}], t["lr"], t)}
        self.identity = {"unet": public_config(model), "distill": self.part, "loss": self.loss, "data": exp["data"],
                         "text_max_length": encoders.max_length}

    def step(self, batch: dict, step: int, ctx) -> dict[str, torch.Tensor]:
        from t2i.diffusion.pixel_sdxl import add_noise, model_timesteps, sample_timesteps, x0_loss
        from t2i.models.pixel_sdxl import patchify, unpatchify

        L, x0, P = self.loss, batch["image"], self.model.config.patch_size
        t = sample_timesteps(x0.shape[0], uniform=L["timesteps"] == "uniform", mean=L["logit_mean"],
                             std=L["logit_std"], device=x0.device)
        teacher = ctx.module(TEACHER)
        tau = model_timesteps(t).round().long()
        z0 = teacher.latents(x0)
        z_t = teacher.add_noise(z0, torch.randn_like(z0), tau)
        with ctx.accelerator.autocast():  # frozen modules are not prepared: the training's precision by hand
            context, pooled = ctx.module(TEXT)(batch["caption"])
            features = teacher.cut_features(z_t, tau, context, pooled, batch["time_ids"], self.removed_levels,
                                            self.part)
        if self.part == "encoder":
            inputs, target = patchify(add_noise(x0, torch.randn_like(x0), t, L["noise_scale"]), P), features
        else:
            inputs, target = features.to(x0.dtype), x0
        student, total = ctx.module(self.name), torch.zeros((), device=x0.device)
        for part, weight in micro_batches(x0.shape[0], self.accumulate):
            pred = student(inputs[part])
            pred = pred if self.part == "encoder" else unpatchify(pred, P)
            if pred.shape[1:] != target.shape[1:]:
                raise ValueError(f"the patch {self.part} gives {tuple(pred.shape[1:])}, the teacher's cut "
                                 f"{tuple(target.shape[1:])}: the teacher's U-Net is not the shape of the student's body")
            loss = x0_loss(pred, target[part]) * weight
            ctx.backward(loss)
            total += loss.detach()
        ctx.optimizer_step(self.name)
        return {"loss": total}

    def export(self, weights: dict[str, dict[str, torch.Tensor]], out_dir: Path) -> None:
        from t2i.models.folder import save_model_folder
        from t2i.models.pixel_sdxl import PixelSDXL

        model = PixelSDXL.from_config(self.model.config)
        model.load_state_dict(self.model.state_dict())
        getattr(model, self.name).load_state_dict(weights[self.name])
        save_model_folder(out_dir, SYSTEM, {UNET: model}, self.meta)


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
                                   min_tags=d["min_tags"], flip=d["flip"])
        encoders = SDXLTextEncoders.load(inputs["text_encoder_1"], inputs["text_encoder_2"], exp["text"]["max_length"])
        torch.manual_seed(t["seed"])  # initial weights are part of what the seed fixes
        model = pixel_sdxl_from_preset(m["preset"], context_dim=encoders.context_dim, pooled_dim=encoders.pooled_dim,
                                       **m["overrides"])
        bad = [f"{w}x{h}" for w, h in metadata.buckets if w % model.size_multiple or h % model.size_multiple]
        if bad:
            raise ValueError(f"buckets {', '.join(bad)} are not multiples of the model's {model.size_multiple} px "
                             f"(patch x downsampling); set prepare.bucket_multiple to a multiple of it")
        teacher = LatentSDXLTeacher.load(inputs["teacher"]) if "teacher" in inputs else None
        if "init" in inputs:
            log.info(f"initial weights from {inputs['init']}: {load_initial_weights(model, Path(inputs['init']))}")
        elif teacher is not None:  # the original's student starts from the teacher's SDXL
            model.load_sdxl_unet(teacher.unet.state_dict())
            log.info(f"body from the teacher's U-Net ({inputs['teacher']})")
        if t["gradient_checkpointing"]:
            model.enable_gradient_checkpointing()
        (w, h), _ = Counter(metadata.buckets[b] for b in metadata.bucket_of).most_common(1)[0]
        meta = {"image_size": [h, w], "noise_scale": exp["loss"]["noise_scale"], "text_max_length": encoders.max_length}
        if teacher is not None:
            task = PixelSDXLDistillTask(model, encoders, teacher, exp, meta)
        else:
            lpips = load_lpips(inputs) if exp["loss"]["lpips_weight"] > 0 else None
            task = PixelSDXLTask(model, encoders, exp, meta, lpips)
        task.batch_sampler = dataset.batch_sampler
        run_training(task, dataset, {k: t[k] for k in TRAIN_DEFAULTS if k in t}, out_dir, inputs=inputs)

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
