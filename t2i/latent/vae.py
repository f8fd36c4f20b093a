"""The Shapes VAE: a small diffusers ``AutoencoderKL`` trained on a Shapes dataset (recipe ``vae``).

It stands in for SDXL's VAE where a Shapes config needs a latent space (the latent SDXL teacher of
pixel-space SDXL's distillation). Its downsampling factor is ``2 ** (len(channels) - 1)``: with the
default two levels a 32-px image becomes a 16x16 latent, so that SDXL's geometry holds at Shapes scale
(VAE factor x the U-Net's first downsample = the pixel model's patch size: 8 x 2 = 16 at 1024 px,
2 x 2 = 4 for ``shapes32``).

Training (through :func:`t2i.train.loop.run_training`): ``mse(decode(z), x) + kl_weight * KL`` with
``z`` sampled from the posterior (Stable Diffusion's VAE adds LPIPS and a GAN loss, which a 32-px
flat-colour dataset does not need), AdamW with warmup and a cosine decay. The ``scaling_factor`` is
then set as Stable Diffusion's was: one over the standard deviation of the train latents.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from t2i.checkpoints.hashing import sha256_file
from t2i.checkpoints.recipes import finish_recipe
from t2i.train.optim import decay_groups
from t2i.train.task import OptimizerSpec

# The asset keys this recipe reads, and their values where a block leaves them out (the schema's defaults).
DEFAULTS = {"steps": 600, "batch_size": 32, "lr": 1e-3, "seed": 0, "channels": [32, 64], "latent_channels": 4,
            "kl_weight": 1e-6}
VAE = "vae"


def vae_config(cfg: dict, image_size: int) -> dict:
    """``AutoencoderKL`` keyword arguments: one down/up block per entry of ``channels``, one ResNet each,
    GroupNorm of 8 groups (the channel counts must be multiples of 8)."""
    channels = list(cfg["channels"])
    if any(c % 8 for c in channels):
        raise ValueError(f"vae channels {channels}: each must be a multiple of 8 (GroupNorm of 8 groups)")
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(channels),
                up_block_types=["UpDecoderBlock2D"] * len(channels), block_out_channels=channels, layers_per_block=1,
                latent_channels=cfg["latent_channels"], norm_num_groups=8, sample_size=image_size)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over a latent, averaged over the batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()


class _Reconstruction(torch.nn.Module):
    """The VAE as one forward (what the loop prepares, so autocast and DDP apply): images -> (reconstruction
    from a posterior sample, posterior mean, log-variance)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.mean, posterior.logvar


class _VAETask:
    """One AdamW step on ``mse(reconstruction) + kl_weight * KL``."""

    def __init__(self, vae, cfg: dict, identity: dict):
        self.vae, self.kl_weight = vae, cfg["kl_weight"]
        self.modules, self.frozen, self.ema = {VAE: _Reconstruction(vae)}, {}, []
        self.optimizers = {VAE: OptimizerSpec(decay_groups(vae, 0.01), lr=cfg["lr"], weight_decay=0.01,
                                              warmup_steps=max(1, cfg["steps"] // 20), grad_clip=1.0,
                                              decay="cosine", total_steps=cfg["steps"])}
        self.identity = identity

    def step(self, batch: dict, step: int, ctx) -> dict:
        x = batch["image"]
        recon, mean, logvar = ctx.module(VAE)(x)
        mse = F.mse_loss(recon.float(), x.float())
        kl = kl_divergence(mean.float(), logvar.float())
        ctx.backward(mse + self.kl_weight * kl)
        ctx.optimizer_step(VAE)
        return {"loss": mse.detach(), "kl": kl.detach()}

    def export(self, weights: dict, out_dir: Path) -> None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_config(self.vae.config)
        vae.load_state_dict({k[len("vae."):]: v for k, v in weights[VAE].items()})
        vae.save_pretrained(out_dir)


@torch.no_grad()
def latent_std(vae, images: torch.Tensor) -> float:
    """The standard deviation of ``images``' posterior samples (unscaled latents)."""
    return torch.cat([vae.encode(b).latent_dist.sample().flatten() for b in images.split(64)]).std().item()


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    """Mean PSNR (dB, images in [-1, 1] as [0, 1]) of ``decode(mean latent)``."""
    values = []
    for b in images.split(64):
        recon = vae.decode(vae.encode(b).latent_dist.mode()).sample.clamp(-1, 1)
        mse = ((recon - b) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-12)
        values += (-10 * torch.log10(mse)).tolist()
    return sum(values) / len(values)


def _images(dataset, count: int) -> torch.Tensor:
    return torch.stack([dataset[(i, 0)]["image"] for i in range(min(count, len(dataset)))])


def train_shapes_vae(dataset_dir: str | Path, out_dir: str | Path, cfg: dict) -> dict:
    """Train the Shapes VAE on a Shapes dataset's train split; write the ``AutoencoderKL`` folder (its
    ``scaling_factor`` set from the train latents), ``metrics.json`` (reconstruction PSNR of the trained
    and of the untrained network on up to 512 train images), ``provenance.json`` and ``SHA256SUMS`` into ``out_dir``."""
    from diffusers import AutoencoderKL

    from t2i.latent.data import shapes_items
    from t2i.train.loop import run_training

    start = time.time()
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if k in DEFAULTS}}
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    work = out_dir / ".train"
    data = shapes_items(dataset_dir, work, seed=cfg["seed"], caption_drop=0.0, flip=True)
    probe = _images(data, 512)
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"])
        vae = AutoencoderKL(**vae_config(cfg, probe.shape[-1]))
        untrained_psnr = reconstruction_psnr(vae.eval(), probe)
    identity = {"recipe": "vae", "cfg": cfg, "annotations_sha256": sha256_file(dataset_dir / "annotations.jsonl")}
    task = _VAETask(vae, cfg, identity)
    task.batch_sampler = data.batch_sampler
    result = run_training(task, data, {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                                       "mixed_precision": "auto", "compile": False, "save_every": 200,
                                       "log_every": max(1, cfg["steps"] // 12)}, work)

    trained = AutoencoderKL.from_pretrained(work / "model", local_files_only=True).eval()
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"])
        std = latent_std(trained, probe)
    trained.register_to_config(scaling_factor=1.0 / std)
    metrics = {"psnr_db_train": reconstruction_psnr(trained, probe), "psnr_db_train_untrained": untrained_psnr,
               "latent_std": std, "scaling_factor": 1.0 / std, "downsampling": 2 ** (len(cfg["channels"]) - 1),
               "images_scored": len(probe), "train_wall_time_s": result["wall_time_s"], "steps": result["step"],
               "num_parameters": sum(p.numel() for p in trained.parameters())}
    finish_recipe(work, out_dir, metrics, cfg, start, dataset_dir, save=trained.save_pretrained)
    return metrics

