"""Latent SDXL: the distillation teacher of pixel-space SDXL, read from a diffusers SDXL pipeline folder
(``unet/``, ``vae/``, ``scheduler/``), and a small one trained on Shapes (recipe ``latent-sdxl``).

**The teacher** (:class:`LatentSDXLTeacher`): SDXL is an epsilon-prediction DDPM on VAE latents
``z0 = vae.encode(x).sample() * scaling_factor`` (SDXL's VAE: 0.13025), noised as
``z_tau = sqrt(abar_tau) z0 + sqrt(1 - abar_tau) e`` at integer timesteps ``tau`` of its scheduler's
betas (scaled-linear 0.00085-0.012 over 1000 steps). :meth:`~LatentSDXLTeacher.cut_features` runs its
U-Net up to where pixel-space SDXL cuts it (:data:`t2i.models.pixel_sdxl.CUTS`): the output of
``down_blocks[r - 1]`` (with its downsampler: what the patch encoder must produce) or the input of
``up_blocks[L - r - 1]``'s upsampler (what the patch decoder receives), ``r`` the levels the cut removes.

**The Shapes teacher** (:func:`train_latent_sdxl`, through :func:`t2i.train.loop.run_training`): the same
class at Shapes scale, by SDXL's own rule: a ``UNet2DConditionModel`` of a pixel-SDXL preset's shape (so
that preset's body is this U-Net cut), on the latents of the Shapes VAE (recipe ``vae``), conditioned by
SDXL's two text encoders (both from the Shapes CLIP), epsilon MSE at uniform integer timesteps with 10%
empty captions, AdamW. It is saved as a ``StableDiffusionXLPipeline`` folder, the layout of
stabilityai/stable-diffusion-xl-base-1.0, so every role that takes SDXL takes it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json (keys that differ from diffusers' defaults)
SDXL_SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                             steps_offset=1, timestep_spacing="leading", clip_sample=False, set_alpha_to_one=False,
                             prediction_type="epsilon")
# The asset keys this recipe reads, and their values where a block leaves them out (the schema's defaults).
DEFAULTS = {"steps": 2000, "batch_size": 32, "lr": 1e-3, "seed": 0, "preset": "shapes32", "caption_drop": 0.1,
            "text_max_length": None}
UNET, TEXT = "unet", "text_encoders"


class _Stop(Exception):
    """Raised by a forward hook once the wanted feature is captured (the rest of the U-Net is not run)."""


class LatentSDXLTeacher(torch.nn.Module):
    """A latent SDXL's U-Net, VAE and training noise schedule (module docstring)."""

    def __init__(self, unet, vae, scheduler_config: dict):
        super().__init__()
        from diffusers import DDPMScheduler

        if scheduler_config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"the latent SDXL teacher must predict epsilon (as SDXL base), its scheduler says "
                             f"{scheduler_config['prediction_type']!r}")
        self.unet, self.vae = unet, vae
        alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.to(torch.float32)
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    @classmethod
    def load(cls, folder: Path) -> "LatentSDXLTeacher":
        """From a diffusers SDXL pipeline folder (``unet/``, ``vae/``, ``scheduler/scheduler_config.json``)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        folder = Path(folder)
        missing = [p for p in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
                   if not (folder / p).is_file()]
        if missing:
            raise ValueError(f"inputs.teacher: {folder} is not a latent SDXL pipeline folder (no {', '.join(missing)})")
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        return cls(UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True),
                   AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True), scheduler)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def vae_factor(self) -> int:
        """Pixels per latent side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def latents(self, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents ``vae.encode(x).sample() * scaling_factor`` (VAE in float32;
        ``sample=False``: the posterior mean)."""
        with torch.autocast(images.device.type, enabled=False):
            posterior = self.vae.encode(images.float()).latent_dist
        return (posterior.sample() if sample else posterior.mode()) * self.vae.config.scaling_factor

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar) z0 + sqrt(1 - abar) noise`` at integer ``timesteps`` ``[B]``."""
        abar = self.alphas_cumprod.to(z0.device)[timesteps].view(-1, *([1] * (z0.ndim - 1)))
        return abar.sqrt() * z0 + (1 - abar).sqrt() * noise

    def unet_kwargs(self, context: torch.Tensor, pooled: torch.Tensor, time_ids: torch.Tensor) -> dict:
        return {"encoder_hidden_states": context, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    @torch.no_grad()
    def cut_features(self, z_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
                     time_ids: torch.Tensor, removed_levels: int, part: str) -> torch.Tensor:
        """The U-Net's features where a cut removing ``removed_levels`` levels puts the patch ``encoder``'s
        output or the patch ``decoder``'s input (module docstring)."""
        levels = len(self.unet.down_blocks)
        if not 0 < removed_levels < levels:
            raise ValueError(f"the teacher's U-Net has {levels} levels; a cut cannot remove {removed_levels}")
        captured = []
        if part == "encoder":
            def hook(module, args, output):
                captured.append(output[0])
                raise _Stop
            handle = self.unet.down_blocks[removed_levels - 1].register_forward_hook(hook)
        elif part == "decoder":
            def hook(module, args, kwargs):
                captured.append(args[0] if args else kwargs["hidden_states"])
                raise _Stop
            upsamplers = self.unet.up_blocks[levels - removed_levels - 1].upsamplers
            if not upsamplers:
                raise ValueError(f"the teacher's up_blocks[{levels - removed_levels - 1}] has no upsampler to cut at")
            handle = upsamplers[0].register_forward_pre_hook(hook, with_kwargs=True)
        else:
            raise ValueError(f"part must be encoder or decoder, not {part!r}")
        try:
            self.unet(z_t, timesteps, **self.unet_kwargs(context, pooled, time_ids))
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]


# ---------------------------------------------------------------------------- the Shapes teacher (recipe)

class _LatentSDXLTask:
    """SDXL's objective: epsilon MSE on ``add_noise(latents, e, tau)``, ``tau`` uniform over the schedule."""

    def __init__(self, teacher: LatentSDXLTeacher, encoders, cfg: dict, identity: dict):
        from t2i.train.task import OptimizerSpec

        self.teacher = teacher
        self.modules, self.ema = {UNET: teacher.unet}, []
        self.frozen = {"vae": teacher.vae, TEXT: encoders}
        self.optimizers = {UNET: OptimizerSpec([{"params": list(teacher.unet.parameters())}], lr=cfg["lr"],
                                               weight_decay=0.01, warmup_steps=max(1, cfg["steps"] // 20),
                                               grad_clip=1.0)}
        self.identity = identity

    def step(self, batch: dict, step: int, ctx) -> dict:
        teacher = self.teacher
        z0 = teacher.latents(batch["image"])
        context, pooled = ctx.module(TEXT)(batch["caption"])
        noise = torch.randn_like(z0)
        tau = torch.randint(0, teacher.num_timesteps, (z0.shape[0],), device=z0.device)
        pred = ctx.module(UNET)(teacher.add_noise(z0, noise, tau), tau,
                                **teacher.unet_kwargs(context, pooled, batch["time_ids"])).sample
        loss = F.mse_loss(pred.float(), noise)
        ctx.backward(loss)
        ctx.optimizer_step(UNET)
        return {"loss": loss.detach()}

    def export(self, weights: dict, out_dir: Path) -> None:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(self.teacher.unet.config)
        unet.load_state_dict(weights[UNET])
        unet.save_pretrained(out_dir / "unet")


@torch.no_grad()
def denoising_error(teacher: LatentSDXLTeacher, encoders, batch: dict, timesteps=(100, 300, 500, 700, 900),
                    seed: int = 0) -> dict[int, float]:
    """Epsilon MSE of the teacher at fixed ``timesteps`` on ``batch``'s posterior means (fixed noise from
    ``seed``): the same inputs for any network and any RNG state."""
    g = torch.Generator().manual_seed(seed)
    z0 = teacher.latents(batch["image"], sample=False)
    noise = torch.randn(z0.shape, generator=g)
    context, pooled = encoders(batch["caption"])
    out = {}
    for tau in timesteps:
        ts = torch.full((z0.shape[0],), tau, dtype=torch.long)
        pred = teacher.unet(teacher.add_noise(z0, noise, ts), ts,
                            **teacher.unet_kwargs(context, pooled, batch["time_ids"])).sample
        out[tau] = F.mse_loss(pred, noise).item()
    return out


def save_pipeline(out_dir: Path, unet, vae, encoders) -> None:
    """A ``StableDiffusionXLPipeline`` folder (SDXL base's layout, its Euler scheduler config; the empty
    prompt is encoded, not zeroed, as the teacher was trained with empty captions)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders.te1, text_encoder_2=encoders.te2,
                                     tokenizer=encoders.tokenizers[0], tokenizer_2=encoders.tokenizers[1], unet=unet,
                                     scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
                                     force_zeros_for_empty_prompt=False)
    pipe.save_pretrained(out_dir)


def train_latent_sdxl(dataset_dir: str | Path, out_dir: str | Path, cfg: dict, assets: dict[str, Path]) -> dict:
    """Train the Shapes latent SDXL (module docstring) on a Shapes dataset's train split with the VAE
    ``assets["vae"]`` and both text encoders from ``assets["text_encoder"]``; write the pipeline folder,
    ``metrics.json`` (epsilon MSE at fixed timesteps, trained and untrained), ``provenance.json`` and
    ``SHA256SUMS`` into ``out_dir``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from t2i.checkpoints.hashing import sha256_file
    from t2i.checkpoints.recipes import finish_recipe
    from t2i.latent.data import shapes_items
    from t2i.models.pixel_sdxl import preset_unet_config
    from t2i.text.sdxl_encoders import SDXLTextEncoders
    from t2i.train.loop import run_training

    start = time.time()
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if k in DEFAULTS}}
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    work = out_dir / ".train"
    data = shapes_items(dataset_dir, work, seed=cfg["seed"], caption_drop=cfg["caption_drop"], flip=False)
    vae = AutoencoderKL.from_pretrained(assets["vae"], local_files_only=True).eval().requires_grad_(False)
    encoders = SDXLTextEncoders.load(assets["text_encoder"], assets["text_encoder"], cfg["text_max_length"])
    image_size = data.meta.buckets[0][0]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_config = {**preset_unet_config(cfg["preset"], context_dim=encoders.context_dim, pooled_dim=encoders.pooled_dim),
                   "in_channels": vae.config.latent_channels, "out_channels": vae.config.latent_channels,
                   "sample_size": image_size // factor}
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"])
        teacher = LatentSDXLTeacher(UNet2DConditionModel.from_config(unet_config), vae, SDXL_SCHEDULER_CONFIG)
        probe = torch.utils.data.default_collate([data[(i, 0)] for i in range(min(256, len(data)))])
        untrained = denoising_error(teacher.eval(), encoders, probe, seed=cfg["seed"])
    identity = {"recipe": "latent-sdxl", "cfg": cfg, "annotations_sha256": sha256_file(dataset_dir / "annotations.jsonl"),
                "unet": unet_config}
    task = _LatentSDXLTask(teacher, encoders, cfg, identity)
    task.batch_sampler = data.batch_sampler
    result = run_training(task, data, {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                                       "mixed_precision": "auto", "compile": False, "save_every": 250,
                                       "log_every": max(1, cfg["steps"] // 20)}, work,
                          inputs={"vae": assets["vae"], "text_encoder": assets["text_encoder"]})

    trained = UNet2DConditionModel.from_pretrained(work / "model" / "unet", local_files_only=True).eval()
    teacher = LatentSDXLTeacher(trained, vae.cpu(), SDXL_SCHEDULER_CONFIG)
    encoders = encoders.cpu()
    metrics = {"eps_mse": denoising_error(teacher, encoders, probe, seed=cfg["seed"]), "eps_mse_untrained": untrained,
               "images_scored": len(probe["image"]), "train_wall_time_s": result["wall_time_s"], "steps": result["step"],
               "num_parameters": sum(p.numel() for p in trained.parameters()), "latent_size": unet_config["sample_size"]}
    finish_recipe(work, out_dir, metrics, cfg, start, dataset_dir,
                  save=lambda out: save_pipeline(out, trained, vae, encoders))
    return metrics
