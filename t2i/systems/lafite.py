"""LAFITE (seed 002): language-free text-to-image generation with a CLIP-conditioned StyleGAN2.

Role ``clip`` (prepare, train, sample). ``prepare`` writes LAFITE's dataset zip (images + raw CLIP
image/caption features, ``t2i.data.lafite_zip``); ``train`` runs the original's four phases per
step (Gmain, Greg every ``G_reg_interval``, Dmain, Dreg every ``D_reg_interval``) as a
``TrainTask`` with two Adam optimizers and an EMA of G with the kimg ramp; ``sample`` conditions
G_ema on the normalised CLIP text feature of each prompt. Training lengths are in the original's
units (``kimg``, ``batch``, ticks of ``kimg_per_tick``, ``snap``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from t2i.gan.lafite import (calibrated_image_noise, contrastive, ema_beta, lazy_regularization, path_length, perturb,
                            r1_penalty, unit)
from t2i.systems.sampling import Generated, prepare_module, row_noise, run_sampling
from t2i.train.state import StepKeyedBatchSampler
from t2i.utils.atomic import atomic_write_text
from t2i.utils.device import default_device

log = logging.getLogger(__name__)

ZIP = "dataset.zip"
GRIDS = "grids"  # in the train folder: fakes{kimg:06d}.png per tick and prompts.txt
GENERATOR, DISCRIMINATOR = "generator", "discriminator"


def load_clip(clip_dir: Path, device: torch.device):
    """A frozen transformers CLIPModel and its processor from a local folder."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval().requires_grad_(False).to(device)
    return model, CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)


class ClipImageTower(torch.nn.Module):
    """CLIP's image features of generated images in [-1, 1], differentiable (the itc/iic losses).

    The original's ``full_preprocess``: a random square crop of side in ``[ratio * S, S)`` (the
    whole image when ``ratio * S`` rounds to ``S``) resized (bicubic) to CLIP's input size, or, for
    images smaller than it, a random placement on a white canvas of that size; then CLIP's normalisation.
    """

    def __init__(self, clip_model, image_mean, image_std, ratio: float):
        super().__init__()
        self.vision, self.projection = clip_model.vision_model, clip_model.visual_projection
        self.size, self.ratio = clip_model.config.vision_config.image_size, ratio
        self.register_buffer("mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = images.shape[-1]
        if s < self.size:
            left, top = (int(torch.randint(0, self.size - s, ())) for _ in range(2))
            x = F.pad(images, (left, self.size - s - left, top, self.size - s - top), value=1.0)
        else:
            low = max(1, int(self.ratio * s))
            cut = int(torch.randint(low, s, ())) if low < s else s  # clip_crop 1: the whole image
            left, top = (int(torch.randint(0, s - cut + 1, ())) for _ in range(2))
            x = F.interpolate(images[:, :, top:top + cut, left:left + cut], (self.size, self.size), mode="bicubic",
                              align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.projection(self.vision(pixel_values=x).pooler_output)


class _MirroredKeyed(torch.utils.data.Dataset):
    """The zip's items, doubled by left-right flipped copies when ``mirror`` (the original's xflip);
    an item is ``(index, step)``: the step keys the caption pick of ground-truth-text training."""

    def __init__(self, zip_dataset, mirror: bool, with_text: bool):
        self.data, self.mirror, self.with_text = zip_dataset, mirror, with_text

    def __len__(self) -> int:
        return len(self.data) * (2 if self.mirror else 1)

    def __getitem__(self, item) -> dict:
        index, key = item
        i, flip = index % len(self.data), index >= len(self.data)
        return self.data[(i, flip, key) if self.with_text else (i, flip)]


def train_units(train: dict) -> dict:
    """The loop's config from LAFITE's units: steps of ``batch`` images, a log row per tick, a state per ``snap`` ticks."""
    per_tick = max(1, round(train["kimg_per_tick"] * 1000 / train["batch"]))
    return {"steps": math.ceil(train["kimg"] * 1000 / train["batch"]), "batch_size": train["batch"],
            "seed": train["seed"], "mixed_precision": train["mixed_precision"], "compile": train["compile"],
            "num_workers": train["workers"], "log_every": per_tick, "save_every": per_tick * train["snap"]}


class FakesGrid:
    """The original's ``fakes{kimg:06d}.png``: G_ema (``noise_mode`` const) on fixed prompts (rows)
    and fixed latents (columns), written per tick; ``prompts.txt`` names the rows."""

    COLUMNS = 8

    def __init__(self, prompts: list[str], features: torch.Tensor, seed: int):
        self.prompts, self.features = prompts, unit(features.float())
        self.seed = seed
        self._generator = None  # built on the first tick, then only given new weights

    def write(self, g_config: dict, g_weights: dict, out_dir: Path, kimg: int, device: torch.device) -> Path:
        from torchvision.utils import make_grid

        from t2i.data.images import save_png, tensor_to_uint8
        from t2i.models.lafite import LafiteGenerator

        if self._generator is None:
            with torch.random.fork_rng(devices=[]):  # its throw-away initialisation must not move training's RNG
                self._generator = LafiteGenerator.from_config(g_config).eval().requires_grad_(False).to(device)
        G = self._generator
        G.load_state_dict(g_weights)
        rows, cols = len(self.prompts), self.COLUMNS
        z = torch.randn(cols, G.config.z_dim, generator=torch.Generator().manual_seed(self.seed)).repeat(rows, 1)
        with torch.no_grad():
            images = G(z.to(device), self.features.repeat_interleave(cols, dim=0).to(device), noise_mode="const")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "prompts.txt", "".join(f"{p}\n" for p in self.prompts))
        path = out_dir / f"fakes{kimg:06d}.png"
        save_png(tensor_to_uint8(make_grid(images, nrow=cols, padding=1, pad_value=1.0)), path)
        return path


class LafiteTask:
    """Gmain / Greg / Dmain / Dreg per step, as drboog/Lafite's ``StyleGAN2Loss.accumulate_gradients``."""

    def __init__(self, G, D, clip_tower, exp: dict, meta: dict):
        from t2i.models import public_config
        from t2i.train.task import EMASpec, OptimizerSpec

        self.loss, t = exp["loss"], exp["train"]
        self.modules, self.frozen = {"G": G, "D": D}, {"clip": clip_tower}
        self.compile_modules = ["G"]  # D's R1 needs a double backward, which torch.compile does not do
        self.intervals = {"G": t["G_reg_interval"] if self.loss["pl_weight"] else 0,
                          "D": t["D_reg_interval"] if self.loss["gamma"] else 0}
        self.optimizers = {}
        for name, module in self.modules.items():
            lr, betas = lazy_regularization(t["lr"], tuple(t["betas"]), self.intervals[name])
            self.optimizers[name] = OptimizerSpec(groups=[{"params": list(module.parameters())}], lr=lr,
                                                  betas=betas, eps=1e-8, kind="adam")
        ema_kimg = t["ema_kimg"] if t["ema_kimg"] is not None else t["batch"] * 10 / 32
        batch, rampup = t["batch"], t["ema_rampup"]
        self.ema = [EMASpec("G", ramp=lambda step: ema_beta(batch, step * batch, ema_kimg=ema_kimg, rampup=rampup))]
        self.buffers = {"pl_mean": torch.zeros(())}
        self.grid: FakesGrid | None = None
        self.batch_size, self.steps_per_tick = batch, train_units(t)["log_every"]
        self._start = time.time()
        self._last_tick_time = None
        self.identity = {"G": public_config(G), "D": public_config(D), "loss": self.loss,
                         "optim": {k: t[k] for k in ("lr", "betas", "ema_kimg", "ema_rampup", "G_reg_interval",
                                                     "D_reg_interval")}}
        self.meta = meta

    def on_log(self, row: dict, out_dir: Path, weights) -> None:
        """Per tick: the original's status line, ``stats.jsonl`` (the row's scalars) and a fakes grid."""
        self._status(row, out_dir)
        if self.grid is not None:
            G = self.modules["G"]
            self.grid.write(G.config, weights()["G"], out_dir / GRIDS, int(row["step"] * self.batch_size // 1000),
                            next(G.parameters()).device)

    def _status(self, row: dict, out_dir: Path) -> None:
        import psutil

        batch = self.batch_size
        kimg, tick = row["step"] * batch / 1000, row["step"] // self.steps_per_tick
        now = row["time"]
        sec_tick = now - self._last_tick_time if self._last_tick_time is not None else float("nan")
        self._last_tick_time = now
        gpumem = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0
        cpumem = psutil.Process().memory_info().rss / 2 ** 30
        log.info(f"tick {tick:<5d} kimg {kimg:<8.1f} time {now - self._start:<8.1f} sec/tick {sec_tick:<7.1f} "
                 f"sec/kimg {sec_tick / (self.steps_per_tick * batch / 1000):<7.2f} maintenance 0.0 "
                 f"cpumem {cpumem:<5.2f} gpumem {gpumem:<5.2f} augment 0.000")
        first = row["step"] <= self.steps_per_tick  # a fresh run starts the file anew
        with open(out_dir / "stats.jsonl", "w" if first else "a", encoding="utf-8") as f:
            f.write(json.dumps({"tick": tick, "kimg": kimg, "sec_per_tick": sec_tick, "cpumem_gb": cpumem,
                                "gpumem_gb": gpumem, **{k: v for k, v in row.items() if k != "step"}}) + "\n")

    def _condition(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        h = unit(batch["img_feature"].float())
        t = unit(batch["txt_feature"].float()) if "txt_feature" in batch else None
        cond = perturb(h, t, mixing_prob=self.loss["mixing_prob"], image_noise=self.loss["image_noise"],
                       text_noise=self.loss["text_noise"])
        return h, cond

    def _generate(self, G, cond: torch.Tensor, ws_out: bool = False):
        """G(z, cond) with style mixing (a second latent from a random layer on, probability ``style_mixing``)."""
        z = torch.randn(cond.shape[0], G.config.z_dim, device=cond.device)
        ws = G.mapping(z)
        if self.loss["style_mixing"] > 0:
            cutoff = int(torch.randint(1, ws.shape[1], ()))
            if float(torch.rand(())) >= self.loss["style_mixing"]:
                cutoff = ws.shape[1]
            z2 = torch.randn_like(z)
            ws = torch.cat([ws[:, :cutoff], G.mapping(z2, skip_w_avg_update=True)[:, cutoff:]], dim=1)
        images, _ = G.synthesis(ws, cond)
        return (images, ws) if ws_out else images

    def _contrastive(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return contrastive(a, b, temp=self.loss["temp"], lam=self.loss["lam"]).mean()

    def _optimizer_step(self, ctx, name: str, module) -> None:
        for p in module.parameters():  # as the original: non-finite gradients become finite
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0, posinf=1e5, neginf=-1e5)
        ctx.optimizer_step(name)

    def step(self, batch: dict, step: int, ctx) -> dict[str, torch.Tensor]:
        G, D, clip = ctx.module("G"), ctx.module("D"), ctx.module("clip")
        real = batch["image"].float() / 127.5 - 1
        h, cond = self._condition(batch)
        L, out = self.loss, {}

        # Gmain: make D call generated images real, and match their CLIP / D features to the condition.
        D.requires_grad_(False)
        fake = self._generate(G, cond)
        logits, fake_fts = D(fake, cond)
        loss = F.softplus(-logits).mean()
        if L["itc"] or L["iic"]:
            clip_fake = unit(clip(fake))
            loss = loss - L["itc"] * self._contrastive(clip_fake, cond) if L["itc"] else loss
            loss = loss - L["iic"] * self._contrastive(clip_fake, h) if L["iic"] else loss
        if L["itd"]:
            loss = loss - L["itd"] * self._contrastive(fake_fts, cond)
        if L["iid"]:
            with torch.no_grad():
                _, real_fts = D(real, cond)
            loss = loss - L["iid"] * self._contrastive(real_fts, fake_fts)
        ctx.backward(loss)
        self._optimizer_step(ctx, "G", G)
        out.update(loss_G=loss.detach(), scores_fake=logits.detach().mean())

        # Greg: path-length regularisation on half the batch.
        k = self.intervals["G"]
        if k and step % k == 0:
            n = max(1, cond.shape[0] // 2)
            images, ws = self._generate(G, cond[:n], ws_out=True)
            lengths = path_length(images, ws)
            pl_mean = self.buffers["pl_mean"]
            pl_mean.copy_(pl_mean.lerp(lengths.mean().detach(), 0.01))
            penalty = (lengths - pl_mean).square()
            ctx.backward((images[:, 0, 0, 0] * 0 + penalty * L["pl_weight"]).mean() * k)
            self._optimizer_step(ctx, "G", G)
            out["pl_penalty"] = penalty.detach().mean()

        # Dmain: generated images fake, real ones real, and D's semantic features matched to the condition.
        D.requires_grad_(True)
        G.requires_grad_(False)
        with torch.no_grad():
            fake = self._generate(G, cond)
        fake_logits, _ = D(fake, cond)
        real_logits, real_fts = D(real, cond)
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        if L["itd"]:
            loss = loss - L["itd"] * self._contrastive(real_fts, cond)
        ctx.backward(loss)
        self._optimizer_step(ctx, "D", D)
        out.update(loss_D=loss.detach(), scores_real=real_logits.detach().mean())

        # Dreg: R1 on real images.
        k = self.intervals["D"]
        if k and step % k == 0:
            real_tmp = real.detach().requires_grad_(True)
            logits, _ = D(real_tmp, cond)
            penalty = r1_penalty(logits, real_tmp)
            ctx.backward((logits * 0 + penalty[:, None] * (L["gamma"] / 2)).mean() * k)
            self._optimizer_step(ctx, "D", D)
            out["r1_penalty"] = penalty.detach().mean()
        G.requires_grad_(True)
        return out

    def export(self, weights: dict[str, dict[str, torch.Tensor]], out_dir: Path) -> None:
        from t2i.models.folder import save_model_folder
        from t2i.models.lafite import LafiteDiscriminator, LafiteGenerator

        G = LafiteGenerator.from_config(self.modules["G"].config)
        G.load_state_dict(weights["G"])  # G_ema: the G's EMA
        D = LafiteDiscriminator.from_config(self.modules["D"].config)
        D.load_state_dict(weights["D"])
        save_model_folder(out_dir, "lafite", {GENERATOR: G, DISCRIMINATOR: D}, self.meta)


def grid_prompts(dataset: Path, count: int, clip_model, processor, seed: int) -> FakesGrid | None:
    """The fakes grid of the first ``count`` distinct prompts of the dataset's ``test`` prompt set."""
    from t2i.data.lafite_zip import HFClipEncoder
    from t2i.utils.atomic import read_jsonl

    path = dataset / "prompts" / "test.jsonl"
    if not count or not path.is_file():
        return None
    prompts = list(dict.fromkeys(r["prompt"] for r in read_jsonl(path)))[:count]
    return FakesGrid(prompts, HFClipEncoder(clip_model, processor, device="cpu").text_features(prompts), seed)


class LafiteSystem:
    """The ``lafite`` system: prepare (dataset zip) -> train (GAN) -> sample (text -> G_ema)."""

    def prepare(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from t2i.data.captions import CaptionDirDataset
        from t2i.data.lafite_zip import caption_dir_items, write_dataset_zip

        p = exp["prepare"]
        train = CaptionDirDataset(inputs["dataset"], split="train")
        names, image_size = train.names, train[0]["image"].shape[-1]
        device = default_device()
        summary = write_dataset_zip(out_dir / ZIP, caption_dir_items(inputs["dataset"], names),
                                    image_size=image_size, clip=load_clip(inputs["clip"], device), device=device,
                                    batch_size=p["batch_size"], seed=p["seed"])
        if "matched_cosine" in summary:
            summary["calibrated_image_noise"] = calibrated_image_noise(summary["matched_cosine"])
            log.info("CLIP image-caption cosine %.3f: loss.image_noise %.2f keeps pseudo text features as close "
                     "to their images", summary["matched_cosine"], summary["calibrated_image_noise"])
        atomic_write_text(out_dir / "zip_summary.json", json.dumps(summary, indent=1) + "\n")

    def train(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from t2i.data.lafite_zip import LafiteZipDataset
        from t2i.models.lafite import lafite_from_preset
        from t2i.train.loop import run_training

        m, t = exp["model"], exp["train"]
        with_text = exp["loss"]["mixing_prob"] <= 0.99
        data = LafiteZipDataset(inputs["prepared"] / ZIP, require_captions=with_text)
        torch.manual_seed(t["seed"])
        G, D = lafite_from_preset(m["preset"], f_dim=data.feature_dim, projection=m["projection"], **m["overrides"])
        if G.config.resolution != data.image_size:
            raise ValueError(f"model resolution {G.config.resolution} differs from the dataset zip's {data.image_size} "
                             f"px ({inputs['prepared'] / ZIP}); set model.overrides.resolution")
        clip_model, processor = load_clip(inputs["clip"], torch.device("cpu"))
        tower = ClipImageTower(clip_model, processor.image_processor.image_mean, processor.image_processor.image_std,
                               exp["loss"]["clip_crop"])
        meta = {"resolution": data.image_size, "f_dim": data.feature_dim, "mixing_prob": exp["loss"]["mixing_prob"]}
        task = LafiteTask(G, D, tower, exp, meta)
        task.grid = grid_prompts(inputs["dataset"], t["grid_prompts"], clip_model, processor, t["seed"])
        task.batch_sampler = StepKeyedBatchSampler
        run_training(task, _MirroredKeyed(data, exp["loss"]["mirror"], with_text), train_units(t), out_dir,
                     inputs=inputs)

    def sample(self, exp: dict, inputs: dict[str, Path], prompts: list[dict], out_dir: Path) -> None:
        from t2i.data.lafite_zip import HFClipEncoder
        from t2i.models.folder import load_component

        s, device = exp["sample"], default_device()
        G = prepare_module(load_component(inputs["model"], GENERATOR, system="lafite"), s, device)
        encoder = HFClipEncoder(*load_clip(inputs["clip"], device), device=device)
        unique = sorted({p["prompt"] for p in prompts})
        table = dict(zip(unique, unit(encoder.text_features(unique).float())))

        def generate_batch(rows: list[dict]) -> Generated:
            fts = torch.stack([table[r["prompt"]] for r in rows]).to(device)
            z = row_noise(rows, (G.config.z_dim,), device)
            return Generated(G(z, fts, truncation_psi=s["truncation_psi"], noise_mode=s["noise_mode"]))

        run_sampling(exp, prompts, out_dir, generate_batch)
