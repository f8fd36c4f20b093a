"""SD3 as LPD's frozen base, read from a diffusers SD3 pipeline folder, and a small one trained on Shapes
(recipe ``sd3``).

**The base** (:class:`SD3Base`): ``transformer/`` (``SD3Transformer2DModel``), ``scheduler/`` (the flow-match
shift), the three text encoders (:class:`t2i.text.sd3_encoders.SD3TextEncoders`) and ``vae/``, whose latents
are ``(encode(x).sample() - shift_factor) * scaling_factor`` (SD3.5: 0.0609, 1.5305). A folder without
``vae/`` is a pixel-space SD3 (the transformer's ``in_channels`` is 3 and the latents are the images in
[-1, 1]): the Shapes stand-in, documented as such, because a 32-px flat-colour image needs no autoencoder
and the default run's budget has no room for one; every other part of the path is SD3's.

**The Shapes base** (:func:`train_shapes_sd3`, through :func:`t2i.train.loop.run_training`): a small
``SD3Transformer2DModel`` trained by SD3's own rule (rectified flow, velocity target, logit-normal sigmas on
the shifted schedule, unit weights, 10% empty captions) on the dataset's *short* captions, with the Shapes
CLIP as CLIP-L and CLIP-G and the packaged MiniLM in the T5 role; saved as an SD3 pipeline folder. Text
features are encoded once per distinct caption (:class:`CaptionFeatures`; the encoders are frozen).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from t2i.text.sd3_encoders import SD3TextEncoders

TRANSFORMER = "transformer"
# The asset keys this recipe reads, and their values where a block leaves them out (the schema's defaults).
DEFAULTS = {"steps": 600, "batch_size": 32, "lr": 1e-3, "seed": 0, "layers": 4, "heads": 2, "head_dim": 32,
            "patch_size": 4, "shift": 3.0, "caption_drop": 0.1, "clip_max_length": None, "t5_max_length": 32}


class SD3Base(torch.nn.Module):
    """A frozen SD3: transformer, scheduler config, text encoders and VAE (or pixel space); module docstring."""

    def __init__(self, transformer, encoders: SD3TextEncoders, scheduler_config: dict, vae=None):
        super().__init__()
        self.transformer, self.encoders, self.vae = transformer, encoders, vae
        self.scheduler_config = dict(scheduler_config)
        c = transformer.config
        if c.joint_attention_dim != encoders.t5_dim:
            raise ValueError(f"the transformer's joint_attention_dim {c.joint_attention_dim} is not the T5 width "
                             f"{encoders.t5_dim}")
        if c.pooled_projection_dim != encoders.pooled_dim:
            raise ValueError(f"the transformer's pooled_projection_dim {c.pooled_projection_dim} is not CLIP-L + "
                             f"CLIP-G's projections ({encoders.pooled_dim})")
        channels = vae.config.latent_channels if vae is not None else 3
        if c.in_channels != channels:
            raise ValueError(f"the transformer takes {c.in_channels} channels, the "
                             f"{'VAE gives' if vae is not None else 'images (no vae/: pixel space) have'} {channels}")

    @classmethod
    def load(cls, folder: Path, clip_max_length: int | None = None, t5_max_length: int | None = None) -> "SD3Base":
        from diffusers import AutoencoderKL, SD3Transformer2DModel

        folder = Path(folder)
        missing = [p for p in (f"{TRANSFORMER}/config.json", "scheduler/scheduler_config.json")
                   if not (folder / p).is_file()]
        if missing:
            raise ValueError(f"inputs.base: {folder} is not an SD3 pipeline folder (no {', '.join(missing)})")
        encoders = SD3TextEncoders.from_pipeline(folder, clip_max_length, t5_max_length)
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        vae = (AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).eval().requires_grad_(False)
               if (folder / "vae" / "config.json").is_file() else None)
        transformer = SD3Transformer2DModel.from_pretrained(folder / TRANSFORMER, local_files_only=True)
        return cls(transformer.eval().requires_grad_(False), encoders, scheduler, vae)

    def cast_frozen(self, dtype: torch.dtype) -> "SD3Base":
        """The transformer and the text encoders in ``dtype`` (the VAE stays float32)."""
        if self.transformer.dtype != dtype:
            self.transformer.to(dtype)
        self.encoders.to(dtype)
        return self

    @property
    def shift(self) -> float:
        return float(self.scheduler_config.get("shift", 1.0))

    @property
    def vae_factor(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    def scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.vae_factor
        if height % f or width % f:
            raise ValueError(f"{height}x{width} px is not a multiple of the VAE's factor {f}")
        return self.transformer.config.in_channels, height // f, width // f

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the transformer's inputs (VAE in float32)."""
        if self.vae is None:
            return images
        c = self.vae.config
        with torch.autocast(images.device.type, enabled=False):
            z = self.vae.encode(images.float()).latent_dist.sample()
        return (z - (c.shift_factor or 0.0)) * c.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents.float().clamp(-1, 1)
        c = self.vae.config
        with torch.autocast(latents.device.type, enabled=False):
            return self.vae.decode(latents.float() / c.scaling_factor + (c.shift_factor or 0.0)).sample.clamp(-1, 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor
                ) -> torch.Tensor:
        """The velocity (float32) at ``x`` for the token sequence ``tokens`` and pooled vector ``pooled``; the inputs
        are cast to the transformer's dtype (bf16 weights under bf16 training or sampling)."""
        dtype = self.transformer.dtype
        return self.transformer(hidden_states=x.to(dtype), timestep=timesteps, encoder_hidden_states=tokens.to(dtype),
                                pooled_projections=pooled.to(dtype), return_dict=False)[0].float()


# ---------------------------------------------------------------------------- the Shapes base (recipe)

def transformer_config(cfg: dict, image_size: int, t5_dim: int, pooled_dim: int) -> dict:
    """``SD3Transformer2DModel`` keyword arguments for a pixel-space Shapes base (SD3's block, small)."""
    if image_size % cfg["patch_size"]:
        raise ValueError(f"patch_size {cfg['patch_size']} does not divide the {image_size}-px images")
    width = cfg["heads"] * cfg["head_dim"]
    return dict(sample_size=image_size, patch_size=cfg["patch_size"], in_channels=3, out_channels=3,
                num_layers=cfg["layers"], attention_head_dim=cfg["head_dim"], num_attention_heads=cfg["heads"],
                joint_attention_dim=t5_dim, caption_projection_dim=width, pooled_projection_dim=pooled_dim,
                pos_embed_max_size=image_size // cfg["patch_size"])


class CaptionFeatures:
    """Frozen text features, each caption encoded once, when a batch first asks for it (the encoders are frozen,
    so this only saves time): ``get(captions)`` -> ``(clip, t5, pooled)`` as :class:`SD3TextEncoders` gives them."""

    def __init__(self, encoders: SD3TextEncoders):
        self.encoders = encoders
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def get(self, captions: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if new:
            for caption, *parts in zip(new, *self.encoders(new)):
                self.cache[caption] = tuple(p.cpu() for p in parts)
        return tuple(torch.stack(x).to(device) for x in zip(*(self.cache[c] for c in captions)))


class _BaseTask:
    """SD3's objective: velocity MSE at logit-normal sigmas of the shifted schedule, unit weights."""

    def __init__(self, transformer, features: CaptionFeatures, cfg: dict, identity: dict):
        from t2i.train.task import OptimizerSpec

        self.features, self.shift = features, cfg["shift"]
        self.modules, self.frozen, self.ema = {TRANSFORMER: transformer}, {"text_encoders": features.encoders}, []
        self.optimizers = {TRANSFORMER: OptimizerSpec([{"params": list(transformer.parameters())}], lr=cfg["lr"],
                                                      weight_decay=0.01, warmup_steps=max(1, cfg["steps"] // 20),
                                                      grad_clip=1.0, decay="cosine", total_steps=cfg["steps"])}
        self.identity = identity

    def step(self, batch: dict, step: int, ctx) -> dict:
        from t2i.diffusion.sd3 import add_noise, losses, model_timesteps, sample_sigmas

        z = batch["image"]
        clip, t5, pooled = self.features.get(batch["caption"], z.device)
        tokens = SD3TextEncoders.joint(clip, t5)
        noise, sigma = torch.randn_like(z), sample_sigmas(z.shape[0], self.shift, device=z.device)
        x_t = add_noise(z, noise, sigma)
        v = ctx.module(TRANSFORMER)(hidden_states=x_t, timestep=model_timesteps(sigma), encoder_hidden_states=tokens,
                                    pooled_projections=pooled, return_dict=False)[0]
        loss = losses(0, v, x_t, z, noise, sigma)["loss"]
        ctx.backward(loss)
        ctx.optimizer_step(TRANSFORMER)
        return {"loss": loss.detach()}

    def export(self, weights: dict, out_dir: Path) -> None:
        from diffusers import SD3Transformer2DModel

        model = SD3Transformer2DModel.from_config(self.modules[TRANSFORMER].config)
        model.load_state_dict(weights[TRANSFORMER])
        model.save_pretrained(out_dir / TRANSFORMER)


@torch.no_grad()
def velocity_error(transformer, features: CaptionFeatures, images: torch.Tensor, captions: list[str], shift: float,
                   sigmas=(0.2, 0.4, 0.6, 0.8), seed: int = 0) -> dict[str, float]:
    """Velocity MSE at fixed ``sigmas`` with fixed noise from ``seed``: the same inputs for any network."""
    from t2i.diffusion.sd3 import add_noise, model_timesteps

    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    clip, t5, pooled = features.get(captions)
    tokens, out = SD3TextEncoders.joint(clip, t5), {}
    for s in sigmas:
        sigma = torch.full((images.shape[0],), s)
        v = transformer(hidden_states=add_noise(images, noise, sigma), timestep=model_timesteps(sigma),
                        encoder_hidden_states=tokens, pooled_projections=pooled, return_dict=False)[0]
        out[str(s)] = (v - (noise - images)).square().mean().item()
    return out


def save_pipeline(out_dir: Path, transformer, encoders: SD3TextEncoders, shift: float) -> None:
    """An SD3 pipeline folder without ``vae/`` (pixel space): transformer, scheduler, three encoders."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from t2i.utils.atomic import atomic_write_json

    transformer.save_pretrained(out_dir / TRANSFORMER)
    FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(out_dir / "scheduler")
    encoders.save_pipeline_parts(out_dir)
    atomic_write_json(out_dir / "model_index.json", {
        "_class_name": "StableDiffusion3Pipeline", "_t2i_note": "pixel space: no vae/ (t2i.latent.sd3)",
        "transformer": ["diffusers", "SD3Transformer2DModel"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        **{name: ["transformers", type(te).__name__] for name, te in
           zip(("text_encoder", "text_encoder_2", "text_encoder_3"), (encoders.clip_l, encoders.clip_g, encoders.t5))}})


def train_shapes_sd3(dataset_dir: str | Path, out_dir: str | Path, cfg: dict, assets: dict[str, Path]) -> dict:
    """Train the Shapes SD3 base (module docstring) on a Shapes dataset's train split, with the CLIP
    ``assets["text_encoder"]`` (as CLIP-L and CLIP-G) and ``assets["text_encoder_3"]`` in the T5 role; write the
    pipeline folder, ``metrics.json`` (velocity MSE at fixed sigmas, trained and untrained),
    ``provenance.json`` and ``SHA256SUMS`` into ``out_dir``."""
    from diffusers import SD3Transformer2DModel

    from t2i.checkpoints.hashing import sha256_file
    from t2i.checkpoints.recipes import finish_recipe
    from t2i.data.caption_items import CaptionItems
    from t2i.latent.data import shapes_train_split
    from t2i.train.loop import run_training

    start = time.time()
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if k in DEFAULTS}}
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    work = out_dir / ".train"
    images, rows = shapes_train_split(dataset_dir)
    captions = [r["caption"] for r in rows]
    clip = assets["text_encoder"]
    encoders = SD3TextEncoders.load((clip, clip, assets["text_encoder_3"]), cfg["clip_max_length"], cfg["t5_max_length"])
    features = CaptionFeatures(encoders)
    config = transformer_config(cfg, images.shape[-1], encoders.t5_dim, encoders.pooled_dim)
    probe = slice(0, min(256, len(captions)))
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"])
        transformer = SD3Transformer2DModel(**config)
        untrained = velocity_error(transformer.eval(), features, images[probe], captions[probe], cfg["shift"],
                                   seed=cfg["seed"])
    identity = {"recipe": "sd3", "cfg": cfg, "annotations_sha256": sha256_file(dataset_dir / "annotations.jsonl"),
                "transformer": config}
    task = _BaseTask(transformer.train(), features, cfg, identity)
    items = CaptionItems(images.__getitem__, captions, cfg["caption_drop"], cfg["seed"])
    task.batch_sampler = items.batch_sampler
    result = run_training(task, items,
                          {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                           "mixed_precision": "auto", "compile": False, "save_every": 250,
                           "log_every": max(1, cfg["steps"] // 20)}, work,
                          inputs={k: assets[k] for k in ("text_encoder", "text_encoder_3")})

    trained = SD3Transformer2DModel.from_pretrained(work / "model" / TRANSFORMER, local_files_only=True).eval()
    metrics = {"velocity_mse": velocity_error(trained, features, images[probe], captions[probe], cfg["shift"],
                                              seed=cfg["seed"]),
               "velocity_mse_untrained": untrained, "images_scored": len(captions[probe]),
               "train_wall_time_s": result["wall_time_s"], "steps": result["step"],
               "num_parameters": sum(p.numel() for p in trained.parameters())}
    finish_recipe(work, out_dir, metrics, cfg, start, dataset_dir,
                  save=lambda out: save_pipeline(out, trained, encoders, cfg["shift"]))
    return metrics
