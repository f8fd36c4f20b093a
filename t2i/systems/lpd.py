"""LPD (seed 003): a long-prompt decomposer trained on a frozen SD3, composed at sampling.

Role ``base``: an SD3 pipeline folder (:class:`t2i.latent.sd3.SD3Base`; SD3.5-Medium, or on Shapes the
``sd3`` recipe's). Only the decomposer (:class:`t2i.models.lpd.PromptDecomposer`) trains: the prompt's T5
states become N component token sets; component i's condition is ``[CLIP tokens padded ; D_i]`` with the
shared pooled vector; the N conditions run as one batch through the frozen transformer (gradients flow
through it into the tokens) and the N velocities are averaged (:mod:`t2i.diffusion.lpd`). The loss is one of
the seed's ``precondition_outputs`` modes (:func:`t2i.diffusion.sd3.losses`) at logit-normal sigmas of the
base's shifted schedule; caption dropout empties whole captions (the seed's ``component_dropout``).

``sample.compose`` picks what is sampled: ``decomposer`` (the trained one, or a checkpoint in the ``model``
role), ``prompt`` (the base given the whole prompt natively: the paper's baseline) or ``sentences`` (each
sentence encoded natively as a component, then the same mean: the paper's sentence-split ablation); the last
two need no training. Guidance is per component on ``[negative, prompt]`` then the mean, with diffusers'
``FlowMatchEulerDiscreteScheduler``; ``save_decompose`` also writes ``component_<i>`` extras, each
component's own trajectory from the composed image's initial noise.

``prepare`` writes ``items.jsonl`` (``path`` under the dataset, ``caption``: the train split's long captions, of
a Shapes dataset or a ``longalign`` one, :mod:`t2i.data.longalign`) and ``summary.json``, after checking the
base's dimension rules.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from t2i.systems.sampling import Generated, row_noise, run_sampling
from t2i.utils.compile import compile_if_wanted
from t2i.utils.atomic import atomic_write_json, atomic_write_jsonl
from t2i.utils.device import default_device, sampling_dtype

log = logging.getLogger(__name__)

SYSTEM = "lpd"
DECOMPOSER, BASE = "decomposer", "base"
ITEMS, SUMMARY = "items.jsonl", "summary.json"


def decomposer_config(exp: dict, width: int) -> dict:
    d = exp["decomposer"]
    return {"width": width, "num_components": d["num_components"], "num_tokens": d["num_tokens"],
            "heads": d["heads"], "layers": d["layers"]}


def check_dimensions(transformer_config, encoders, exp: dict) -> None:
    """The research note's dimension rules, before any training: decomposer width = T5 width =
    ``joint_attention_dim``; heads divide it; ``caption_projection_dim`` = heads x head dim."""
    c, d = transformer_config, exp["decomposer"]
    if c["joint_attention_dim"] != encoders.t5_dim:
        raise ValueError(f"inputs.base: joint_attention_dim {c['joint_attention_dim']} is not the T5 width "
                         f"{encoders.t5_dim} (the decomposer's width)")
    if encoders.t5_dim % d["heads"]:
        raise ValueError(f"decomposer.heads {d['heads']} does not divide the width {encoders.t5_dim} (the T5 d_model)")
    if c["caption_projection_dim"] != c["num_attention_heads"] * c["attention_head_dim"]:
        raise ValueError(f"inputs.base: caption_projection_dim {c['caption_projection_dim']} is not "
                         f"{c['num_attention_heads']} heads x {c['attention_head_dim']}")


def split_sentences(prompt: str) -> list[str]:
    """A prompt's sentences (the sentence-split ablation's components); the prompt itself if it has one."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", prompt.strip()) if p.strip()]
    return parts or [prompt]


class LPDTask:
    """One decomposer step (module docstring); the base (with its text encoders) is frozen."""

    def __init__(self, decomposer, base, exp: dict, features=None):
        from t2i.models import public_config
        from t2i.train.optim import adamw_spec

        t, self.loss, self.features = exp["train"], exp["loss"], features
        self.modules, self.frozen, self.ema = {DECOMPOSER: decomposer}, {BASE: base}, []
        self.optimizers = {DECOMPOSER: adamw_spec([{"params": list(decomposer.parameters())}], t["lr"], t)}
        self.text_mask, self.accumulate = exp["decomposer"]["text_mask"], t["accumulate"]
        limit = t["checkpoints_total_limit"]
        self.keep_checkpoints = 1 << 30 if limit is None else limit  # checkpoints/checkpoint-<step>/, as the seed's
        self.validation = {"every": t["validation_every"], "prompt": t["validation_prompt"],
                           "steps": t["validation_steps"], "cfg": t["validation_cfg"]}
        self.identity = {"decomposer": public_config(decomposer), "text_mask": self.text_mask, "loss": self.loss,
                         "text": exp["text"], "data": exp["data"]}

    def _text(self, captions: list[str], base, device):
        if self.features is not None:
            return self.features.get(captions, device)
        with torch.no_grad():
            return base.encoders(captions)

    def step(self, batch: dict, step: int, ctx) -> dict[str, torch.Tensor]:
        from t2i.diffusion.sd3 import add_noise, sample_sigmas
        from t2i.train.optim import micro_batches

        base, L = ctx.module(BASE), self.loss
        z = base.latents(batch["image"])
        sigma = sample_sigmas(z.shape[0], base.shift, L["logit_mean"], L["logit_std"], device=z.device)
        noise = torch.randn_like(z)
        x_t = add_noise(z, noise, sigma)
        totals: dict[str, torch.Tensor] = {}
        for rows, weight in micro_batches(z.shape[0], self.accumulate):
            terms = self._terms(ctx, base, batch["caption"][rows], z[rows], noise[rows], x_t[rows], sigma[rows])
            ctx.backward(terms["loss"] * weight)
            for k, v in terms.items():
                totals[k] = totals.get(k, 0) + v.detach() * weight
        ctx.optimizer_step(DECOMPOSER)
        if self.validation["every"] and (step + 1) % self.validation["every"] == 0 \
                and ctx.accelerator.is_main_process:
            self._validate(ctx, base)
        return totals

    def _terms(self, ctx, base, captions: list[str], z, noise, x_t, sigma) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch: the N conditions as one batch through the frozen base, their mean."""
        from t2i.diffusion.lpd import component_conditions, mean_over_components, repeat_for_components
        from t2i.diffusion.sd3 import losses, model_timesteps

        L, n = self.loss, self.modules[DECOMPOSER].config.num_components
        with ctx.accelerator.autocast():  # the frozen base is not prepared: the training's precision by hand
            clip, t5, pooled = self._text(captions, base, z.device)
        mask = base.encoders.t5_mask(captions) if self.text_mask else None
        components = ctx.module(DECOMPOSER)(t5, mask)
        timesteps = model_timesteps(sigma)
        with ctx.accelerator.autocast():
            rows = base(repeat_for_components(x_t, n), repeat_for_components(timesteps, n),
                        component_conditions(clip, components), repeat_for_components(pooled, n))
            teacher = None
            if L["precondition_outputs"] in (2, 3):
                with torch.no_grad():
                    teacher = base(x_t, timesteps, base.encoders.joint(clip, t5), pooled)
        return losses(L["precondition_outputs"], mean_over_components(rows, n), x_t, z, noise, sigma, teacher)

    @torch.no_grad()
    def _validate(self, ctx, base) -> None:
        """The validation prompt's composed image and its component images, from one seeded noise."""
        decomposer = self.modules[DECOMPOSER]  # the module itself, not its DDP wrapper
        was_training = decomposer.training
        decomposer.eval()
        v, c = self.validation, base.transformer.config
        composer = Composer(base, decomposer, "decomposer", self.text_mask)
        noise = torch.randn((1, *base.latent_shape(*[c.sample_size * base.vae_factor] * 2)),
                            generator=torch.Generator().manual_seed(0)).to(next(base.parameters()).device)
        s = {"steps": v["steps"], "cfg": v["cfg"]}
        with ctx.accelerator.autocast():
            cond = composer.conditions([v["prompt"]])
            uncond = composer.conditions([""]) if v["cfg"] != 1 else None
            ctx.log_images("validation/compose", base.decode(composer.sample(noise, cond, uncond, s)))
            ctx.log_images("validation/decompose", base.decode(torch.cat(composer.components(noise, cond, uncond, s))))
        decomposer.train(was_training)

    def export(self, weights: dict[str, dict[str, torch.Tensor]], out_dir: Path) -> None:
        from t2i.models.folder import save_model_folder
        from t2i.models.lpd import PromptDecomposer

        model = PromptDecomposer.from_config(self.modules[DECOMPOSER].config)
        model.load_state_dict(weights[DECOMPOSER])
        save_model_folder(out_dir, SYSTEM, {DECOMPOSER: model}, {"text_mask": self.text_mask})


def _read_items(prepared: Path) -> list[dict]:
    with open(prepared / ITEMS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_decomposer(source: Path, expected: dict, text_mask: bool | None = None):
    """The decomposer to sample: a t2i model folder (this system's; with ``text_mask`` given, it must have been
    trained with the same setting), a folder with ``model.safetensors`` and ``config.json``, or a
    ``.safetensors`` file (an asset folder holding one is read as that file)."""
    from t2i.models.folder import INDEX, ModelFolderError, read_index
    from t2i.models.lpd import PromptDecomposer

    source = Path(source)
    if (source / INDEX).is_file():
        index = read_index(source)
        if index["system"] != SYSTEM:
            raise ModelFolderError(f"inputs.model: {source} was trained by system {index['system']!r}")
        trained_mask = index["meta"].get("text_mask")
        if text_mask is not None and trained_mask is not None and trained_mask != text_mask:
            raise ValueError(f"{source}: the decomposer was trained with decomposer.text_mask {trained_mask}, this "
                             f"experiment says {text_mask}")
        return PromptDecomposer.from_pretrained(source / DECOMPOSER, expected)
    if source.is_dir() and not (source / "model.safetensors").is_file():
        files = sorted(source.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"inputs.model: {source} holds {len(files)} .safetensors files, not one decomposer")
        source = files[0]
    return PromptDecomposer.from_pretrained(source, expected)


class LPDSystem:
    """The ``lpd`` system: prepare (training items) -> train (the decomposer) -> sample (composed + components)."""

    def prepare(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from t2i.text.sd3_encoders import SD3TextEncoders

        dataset = Path(inputs["dataset"])
        annotations = dataset / "annotations.jsonl"
        if not annotations.is_file():
            raise ValueError(f"{dataset}: lpd trains on a dataset with long captions (annotations.jsonl of a "
                             f"Shapes or longalign dataset); none here")
        base = Path(inputs["base"])
        transformer = json.loads((base / "transformer" / "config.json").read_text(encoding="utf-8"))
        encoders = SD3TextEncoders.from_pipeline(base, exp["text"]["clip_max_length"], exp["text"]["token_length"])
        check_dimensions(transformer, encoders, exp)
        with open(annotations, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        items = [{"path": f"images/{r.get('file', r['name'] + '.png')}", "caption": r["long_caption"],
                  "source": r.get("source", "shapes")} for r in rows if r["split"] == "train" and r.get("long_caption")]
        if not items:
            raise ValueError(f"{annotations}: no train rows with a long_caption (a Shapes or longalign dataset)")
        atomic_write_jsonl(Path(out_dir) / ITEMS, items)
        atomic_write_json(Path(out_dir) / SUMMARY, {"items": len(items), "captions": "long_caption",
                                                    "width": encoders.t5_dim})

    def train(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from t2i.data.caption_items import CaptionItems, image_tensor
        from t2i.latent.sd3 import CaptionFeatures, SD3Base
        from t2i.models.lpd import PromptDecomposer
        from t2i.train.loop import TRAIN_DEFAULTS, run_training

        t, text, d = exp["train"], exp["text"], exp["data"]
        items = _read_items(Path(inputs["prepared"]))
        if d["image_size"] is None and any(it["source"] != "shapes" for it in items):
            raise ValueError("data.image_size is null (images as they are) but the dataset's images are not all one "
                             "size (a longalign dataset): set data.image_size (the seed's 512)")
        base = SD3Base.load(inputs["base"], text["clip_max_length"], text["token_length"])
        if torch.cuda.is_available() and t["mixed_precision"] in ("bf16", "auto"):
            base.cast_frozen(torch.bfloat16)  # as the seed's weight_dtype; the decomposer keeps fp32 master weights
        if t["gradient_checkpointing"]:
            base.transformer.enable_gradient_checkpointing()
        dataset, size = Path(inputs["dataset"]), d["image_size"]
        captions = [it["caption"] for it in items]
        features = CaptionFeatures(base.encoders) if t["cache_text"] else None
        torch.manual_seed(t["seed"])  # initial weights are part of what the seed fixes
        decomposer = PromptDecomposer(**decomposer_config(exp, base.encoders.t5_dim))
        task = LPDTask(decomposer, base, exp, features)
        data = CaptionItems(lambda i: image_tensor(dataset / items[i]["path"], size), captions, d["caption_drop"],
                            t["seed"])
        task.batch_sampler = data.batch_sampler
        run_training(task, data, {k: t[k] for k in TRAIN_DEFAULTS if k in t}, out_dir, inputs=inputs)

    def sample(self, exp: dict, inputs: dict[str, Path], prompts: list[dict], out_dir: Path) -> None:
        from t2i.latent.sd3 import SD3Base

        s, text, device = exp["sample"], exp["text"], default_device()
        base = SD3Base.load(inputs["base"], text["clip_max_length"], text["token_length"]).to(device)
        base.cast_frozen(sampling_dtype(s["dtype"], device))  # the inputs follow the weights (SD3Base.forward): no autocast
        base.transformer = compile_if_wanted(base.transformer, s["compile"], device)
        decomposer = None
        if s["compose"] == "decomposer":
            decomposer = load_decomposer(Path(inputs["model"]), decomposer_config(exp, base.encoders.t5_dim),
                                         exp["decomposer"]["text_mask"])
            decomposer = decomposer.to(device).eval().requires_grad_(False)
        c = base.transformer.config
        height, width = s["size"] or [c.sample_size * base.vae_factor] * 2
        shape = base.latent_shape(height, width)
        composer = Composer(base, decomposer, s["compose"], exp["decomposer"]["text_mask"])

        def generate_batch(rows: list[dict]) -> Generated:
            prompts_ = [r["prompt"] for r in rows]
            noise = row_noise(rows, shape, device)
            cond = composer.conditions(prompts_)
            uncond = composer.conditions([s["negative_prompt"]] * len(rows)) if s["cfg"] != 1 else None
            images = base.decode(composer.sample(noise, cond, uncond, s))
            extras = {}
            if decomposer is not None and s["save_decompose"]:
                for i, picture in enumerate(composer.components(noise, cond, uncond, s)):
                    extras[f"component_{i}"] = base.decode(picture)
            return Generated(images, extras)

        run_sampling(exp, prompts, out_dir, generate_batch)


class Composer:
    """Conditions of a batch of prompts as rows of the frozen base, with the prompt each row belongs to, and
    the guided Euler sampler on their per-prompt mean (module docstring, ``sample.compose``)."""

    def __init__(self, base, decomposer, compose: str, text_mask: bool):
        self.base, self.decomposer, self.compose, self.text_mask = base, decomposer, compose, text_mask

    @torch.no_grad()
    def conditions(self, prompts: list[str]) -> dict:
        """``{"tokens" [R, L, W], "pooled" [R, P], "group" [R]}``: row r conditions prompt ``group[r]``."""
        from t2i.diffusion.lpd import component_conditions, repeat_for_components

        enc, b = self.base.encoders, len(prompts)
        if self.compose == "sentences":
            sentences = [split_sentences(p) for p in prompts]
            flat = [x for parts in sentences for x in parts]
            group = torch.tensor([i for i, parts in enumerate(sentences) for _ in parts])
            clip, t5, pooled = enc(flat)
            return {"tokens": enc.joint(clip, t5), "pooled": pooled, "group": group}
        clip, t5, pooled = enc(prompts)
        if self.compose == "prompt":
            return {"tokens": enc.joint(clip, t5), "pooled": pooled, "group": torch.arange(b)}
        mask = enc.t5_mask(prompts) if self.text_mask else None
        components = self.decomposer(t5.to(self.decomposer.queries.dtype), mask)
        n = components.shape[1]
        return {"tokens": component_conditions(clip, components), "pooled": repeat_for_components(pooled, n),
                "group": torch.arange(b).repeat(n)}

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """Each row's velocity, averaged per prompt (the component mean)."""
        group = cond["group"].to(x.device)
        rows = self.base(x[group], t[group], cond["tokens"], cond["pooled"]).float()
        total = torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, group, rows)
        counts = torch.bincount(group, minlength=x.shape[0]).clamp_min(1).view(-1, *([1] * (x.ndim - 1)))
        return total / counts

    def sample(self, noise: torch.Tensor, cond: dict, uncond: dict | None, s: dict) -> torch.Tensor:
        from t2i.diffusion.lpd import guided
        from t2i.diffusion.sd3 import sample

        def velocity(x, t):
            c = self._velocity(x, t, cond)
            return c if uncond is None else guided(self._velocity(x, t, uncond), c, s["cfg"])

        return sample(velocity, noise, self.base.scheduler(), s["steps"])

    def components(self, noise: torch.Tensor, cond: dict, uncond: dict | None, s: dict) -> list[torch.Tensor]:
        """Component i's own trajectory for each prompt (guided by component i alone), all from ``noise``."""
        n = cond["tokens"].shape[0] // noise.shape[0]
        x = self.sample(noise.repeat(n, *([1] * (noise.ndim - 1))), _rows_apart(cond), _rows_apart(uncond), s)
        return list(x.chunk(n))


def _rows_apart(cond: dict | None) -> dict | None:
    """The same conditions with every row its own trajectory (no mean)."""
    return None if cond is None else {**cond, "group": torch.arange(cond["tokens"].shape[0])}
