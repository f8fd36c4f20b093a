"""LayoutLLM's drawer: a GLIGEN pipeline folder with the relation module, and a small one trained on Shapes
(recipe ``gligen``).

**The drawer** (:class:`GLIGENDrawer`) reads a ``StableDiffusionGLIGENPipeline``-layout folder: ``unet/``
(:class:`t2i.models.gligen.RelationUNet2DConditionModel`), ``scheduler/``, ``text_encoder/`` (a
``CLIPTextModel``; a ``CLIPModel`` folder works) with ``tokenizer/``, and ``vae/`` (``AutoencoderKL``, latents
times its ``scaling_factor``). A folder without ``vae/`` is pixel space: the U-Net takes ``3 p^2`` channels,
the image's p x p patches (``pixel_unshuffle``; the Shapes drawer's p is 2, so its 16 x 16 grid halves the
convolutions' cost at 32 px). It is the Shapes stand-in, because a flat-colour image needs no learned
autoencoder and the default run has no budget for one. Conditioning as the original: the caption's last hidden states (padded to the tokenizer's length); one
grounding token per object from the ``pooler_output`` of its name and its xyxy box (at most 30, GLIGEN's
``max_objs``); the relation triplets' ``pooler_output`` (at most 10, zero rows pad) for the relation module.

**The Shapes drawer** (:func:`train_shapes_gligen`, through :func:`t2i.train.loop.run_training`): the whole
U-Net trained from scratch by GLIGEN's rule (MSE at uniform timesteps of the scheduler's betas, of the noise as
GLIGEN, or of the velocity or the image where ``prediction_type`` says; 10% of
captions emptied and, independently, 10% of layouts dropped, so classifier-free guidance has both null
inputs) on the train split's captions, object boxes and the relations its captions state; the Shapes CLIP is
the text encoder. The original fine-tunes the gated and relation layers of a pretrained GLIGEN; with no
pretrained one on Shapes everything trains.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from t2i.layout.examples import shapes_layout
from t2i.models.gligen import RelationUNet2DConditionModel, relation_kwargs

UNET = "unet"
MAX_OBJECTS = 30    # GLIGEN's max_objs
MAX_RELATIONS = 10  # the original's max_relations (main.py default)
DEFAULTS = {"steps": 1000, "batch_size": 32, "lr": 1e-3, "seed": 0, "channels": [32, 64], "head_dim": 32, "patch": 2,
            "caption_drop": 0.1, "layout_drop": 0.1, "beta_schedule": "linear", "prediction_type": "epsilon",
            "relations": "shapes"}


def layout_tensors(layouts: list[list[dict]], text: "ClipText", device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes ``[B, 30, 4]`` (normalised xyxy), masks ``[B, 30]`` and name embeddings ``[B, 30, D]`` of layouts
    (lists of ``{"name", "box"}``; objects past the 30th are left out, as diffusers' pipeline does);
    names are embedded by ``text.pooled``."""
    names = sorted({o["name"] for layout in layouts for o in layout[:MAX_OBJECTS]})
    table = dict(zip(names, text.pooled(names).to(device))) if names else {}
    dim = text.dim
    boxes = torch.zeros(len(layouts), MAX_OBJECTS, 4, device=device)
    masks = torch.zeros(len(layouts), MAX_OBJECTS, device=device)
    embeddings = torch.zeros(len(layouts), MAX_OBJECTS, dim, device=device)
    for b, layout in enumerate(layouts):
        for i, obj in enumerate(layout[:MAX_OBJECTS]):
            boxes[b, i] = torch.tensor(obj["box"], device=device)
            masks[b, i] = 1
            embeddings[b, i] = table[obj["name"]]
    return boxes, masks, embeddings


def relation_tensor(relations: list[list[str]], text: "ClipText", device) -> torch.Tensor:
    """``[B, 10, D]``: each prompt's relation triplets embedded, zero rows after them."""
    out = torch.zeros(len(relations), MAX_RELATIONS, text.dim, device=device)
    texts = sorted({r for rs in relations for r in rs[:MAX_RELATIONS]})
    table = dict(zip(texts, text.pooled(texts).to(device))) if texts else {}
    for b, rs in enumerate(relations):
        for i, r in enumerate(rs[:MAX_RELATIONS]):
            out[b, i] = table[r]
    return out


class ClipText(torch.nn.Module):
    """The drawer's frozen CLIP text encoder: ``context(captions)`` (last hidden states, padded to the
    tokenizer's length, as SD) and ``pooled(texts)`` (``pooler_output``: object names and relations); each text
    is encoded once (the encoder is frozen)."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def _encode(self, kind: str, texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if (kind, t) not in self._cache))
        if new:
            padding = "max_length" if kind == "context" else True
            ids = self.tokenizer(new, padding=padding, truncation=True, max_length=self.tokenizer.model_max_length,
                                 return_tensors="pt").to(self.model.device)
            out = self.model(**ids)
            values = out.last_hidden_state if kind == "context" else out.pooler_output
            for text, value in zip(new, values):
                self._cache[(kind, text)] = value.float().cpu()
        return torch.stack([self._cache[(kind, t)] for t in texts])

    def context(self, captions: list[str]) -> torch.Tensor:
        return self._encode("context", captions)

    def pooled(self, texts: list[str]) -> torch.Tensor:
        return self._encode("pooled", texts)


class GLIGENDrawer(torch.nn.Module):
    """A frozen (or training) GLIGEN U-Net with its text encoder, scheduler config and VAE (module docstring)."""

    def __init__(self, unet: RelationUNet2DConditionModel, text: ClipText, scheduler_config: dict, vae=None):
        super().__init__()
        self.unet, self.text, self.vae = unet, text, vae
        self.scheduler_config = dict(scheduler_config)
        c = unet.config.in_channels
        self.patch = 1 if vae is not None else round((c / 3) ** 0.5)
        if vae is not None and c != vae.config.latent_channels:
            raise ValueError(f"the U-Net takes {c} channels, the VAE gives {vae.config.latent_channels}")
        if vae is None and c != 3 * self.patch ** 2:
            raise ValueError(f"the U-Net takes {c} channels: not 3 x p x p (no vae/: pixel space, p x p patches)")
        if unet.config.cross_attention_dim != text.dim or unet.config.relation_dim != text.dim:
            raise ValueError(f"the U-Net's cross_attention_dim {unet.config.cross_attention_dim} and relation_dim "
                             f"{unet.config.relation_dim} must be the text encoder's width {text.dim}")

    @classmethod
    def load(cls, folder: str | Path) -> "GLIGENDrawer":
        from diffusers import AutoencoderKL
        from transformers import AutoTokenizer, CLIPTextModel

        from t2i.text.sdxl_encoders import text_model

        folder = Path(folder)
        missing = [p for p in (f"{UNET}/config.json", "scheduler/scheduler_config.json", "text_encoder/config.json")
                   if not (folder / p).is_file()]
        if missing:
            raise ValueError(f"inputs.drawer: {folder} is not a GLIGEN pipeline folder (no {', '.join(missing)})")
        unet_class = json.loads((folder / UNET / "config.json").read_text(encoding="utf-8")).get("_class_name")
        if unet_class != RelationUNet2DConditionModel.__name__:
            raise ValueError(f"inputs.drawer: {folder}/{UNET} is a {unet_class}, not a GLIGEN U-Net with the relation "
                             "module (RelationUNet2DConditionModel): plain GLIGEN is not LayoutLLM-T2I")
        tokenizer_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder / "text_encoder"
        text = ClipText(text_model(CLIPTextModel, folder / "text_encoder").eval().requires_grad_(False),
                        AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True))
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        vae = (AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).eval().requires_grad_(False)
               if (folder / "vae" / "config.json").is_file() else None)
        unet = RelationUNet2DConditionModel.from_pretrained(folder / UNET, local_files_only=True)
        return cls(unet.eval().requires_grad_(False), text, scheduler, vae)

    def cast(self, dtype: torch.dtype) -> "GLIGENDrawer":
        """The U-Net, text encoder and VAE in ``dtype`` (``sample.dtype``); their inputs follow the weights. Models
        already in ``dtype`` are left alone (diffusers warns on every ``to(dtype)``, even one that changes nothing)."""
        for model in (self.unet, self.text.model, self.vae):
            if model is not None and model.dtype != dtype:  # no VAE: a pixel-space drawer
                model.to(dtype)
        return self

    @property
    def vae_factor(self) -> int:
        """Image pixels per U-Net cell along a side: the VAE's factor, or the pixel patch."""
        return self.patch if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_factor

    def scheduler(self, name: str | None = None):
        """The folder's scheduler, or ``name`` (pndm: PLMS, ddim, dpm: DPM-Solver++) from its config."""
        import diffusers

        classes = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler",
                   None: self.scheduler_config.get("_class_name", "PNDMScheduler")}
        extra = {"skip_prk_steps": True} if classes[name] == "PNDMScheduler" else {}
        return getattr(diffusers, classes[name]).from_config({**self.scheduler_config, **extra})

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return torch.nn.functional.pixel_unshuffle(images, self.patch)
        with torch.autocast(images.device.type, enabled=False):
            return self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return torch.nn.functional.pixel_shuffle(latents.float(), self.patch).clamp(-1, 1)
        with torch.autocast(latents.device.type, enabled=False):
            z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            return self.vae.decode(z).sample.float().clamp(-1, 1)

    def conditions(self, captions: list[str], layouts: list[list[dict]] | None, relations: list[list[str]],
                   device) -> dict:
        """The U-Net's conditioning for a batch: ``layouts`` None (or a layout's empty list) grounds nothing."""
        n = len(captions)
        layouts = layouts if layouts is not None else [[] for _ in range(n)]
        boxes, masks, embeddings = layout_tensors(layouts, self.text, device)
        return {"context": self.text.context(captions).to(device),
                "gligen": {"boxes": boxes, "masks": masks, "positive_embeddings": embeddings},
                "relations": relation_tensor(relations, self.text, device)}

    def relation(self, cond: dict, size: tuple[int, int], levels: int = 0) -> dict:
        """The relation module's inputs for ``cond`` at U-Net input ``size`` (:func:`relation_kwargs`)."""
        g = cond["gligen"]
        return relation_kwargs(cond["relations"].to(self.unet.dtype), g["boxes"], g["masks"], size, levels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
        """The noise prediction (float32) at ``x``; inputs are cast to the U-Net's dtype; ``cond["relation"]``,
        where given, holds the relation inputs computed once for ``x``'s size."""
        dtype = self.unet.dtype
        g = cond["gligen"]
        kwargs = {"gligen": {k: v.to(dtype) for k, v in g.items()},
                  "relation": cond.get("relation") or self.relation(cond, x.shape[-2:])}
        return self.unet(x.to(dtype), timesteps, encoder_hidden_states=cond["context"].to(dtype),
                         cross_attention_kwargs=kwargs, return_dict=False)[0].float()


def set_fuser(unet, enabled: bool) -> None:
    """GLIGEN's scheduled sampling switch: the gated self-attention on or off (the relation module stays)."""
    from diffusers.models.attention import GatedSelfAttentionDense

    for module in unet.modules():
        if isinstance(module, GatedSelfAttentionDense):
            module.enabled = enabled


def _stack(a: dict, b: dict) -> dict:
    """Two condition dicts as one batch ``[a; b]``."""
    return {k: _stack(v, b[k]) if isinstance(v, dict) else torch.cat([v, b[k]]) for k, v in a.items()}


@torch.no_grad()
def draw(drawer: GLIGENDrawer, noise: torch.Tensor, cond: dict, uncond: dict | None, *, steps: int, cfg: float,
         beta: float, scheduler: str | None = None) -> torch.Tensor:
    """Sample from ``noise``: classifier-free guidance on ``[uncond; cond]`` (``uncond``: empty caption, no
    grounding, the prompt's relations), the gated self-attention on for the first ``int(beta * steps)`` steps
    (GLIGEN's scheduled sampling), then off. Returns the final latents (images in pixel space).

    The scheduler keeps its timesteps on the CPU and the U-Net reads a device copy made once: a scheduler step
    indexing its CPU tables with a device timestep would wait for the GPU every step, leaving it idle while the
    next U-Net call is launched."""
    sched = drawer.scheduler(scheduler)
    sched.set_timesteps(steps)
    unet_timesteps = sched.timesteps.to(noise.device)
    x = noise * sched.init_noise_sigma
    grounded = int(beta * len(sched.timesteps))
    both = _stack(uncond, cond) if uncond is not None else cond
    both = {**both, "relation": drawer.relation(both, noise.shape[-2:], levels=len(drawer.unet.config.block_out_channels))}
    try:
        for i, t in enumerate(sched.timesteps):
            set_fuser(drawer.unet, i < grounded)
            inp = sched.scale_model_input(torch.cat([x, x]) if uncond is not None else x, t)
            eps = drawer(inp, unet_timesteps[i].expand(inp.shape[0]), both)
            if uncond is not None:
                e_u, e_c = eps.chunk(2)
                eps = e_u + cfg * (e_c - e_u)
            x = sched.step(eps, t, x).prev_sample
    finally:
        set_fuser(drawer.unet, True)
    return x


def unconditional(drawer: GLIGENDrawer, relations: list[list[str]], device) -> dict:
    """CFG's negative branch as the original's: the empty caption, null grounding, the prompt's relations."""
    return drawer.conditions([""] * len(relations), None, relations, device)


def save_pipeline(out_dir: Path, unet, text: ClipText, scheduler, vae=None) -> None:
    """A ``StableDiffusionGLIGENPipeline``-layout folder (pixel space without ``vae``); its scheduler is PLMS
    (``PNDMScheduler``, the original's sampler; deterministic given the initial noise) on the training betas."""
    from diffusers import PNDMScheduler

    from t2i.utils.atomic import atomic_write_json

    scheduler = PNDMScheduler.from_config(scheduler.config, skip_prk_steps=True)
    unet.save_pretrained(out_dir / UNET)
    scheduler.save_pretrained(out_dir / "scheduler")
    text.model.save_pretrained(out_dir / "text_encoder")
    text.tokenizer.save_pretrained(out_dir / "tokenizer")
    if vae is not None:
        vae.save_pretrained(out_dir / "vae")
    space = "latent space (vae/)" if vae is not None else "pixel space: no vae/"
    atomic_write_json(out_dir / "model_index.json", {
        "_class_name": "StableDiffusionGLIGENPipeline",
        "_t2i_note": f"{space}; the U-Net carries LayoutLLM's relation module (t2i.latent.gligen)",
        "unet": ["t2i.models.gligen", "RelationUNet2DConditionModel"], "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", type(text.model).__name__],
        "tokenizer": ["transformers", type(text.tokenizer).__name__],
        "vae": ["diffusers", type(vae).__name__] if vae is not None else [None, None],
        "safety_checker": [None, None], "feature_extractor": [None, None]})


# ---------------------------------------------------------------------------- the Shapes drawer (recipe)

def unet_config(cfg: dict, image_size: int, text_dim: int) -> dict:
    """A small SD-shaped U-Net on p x p pixel patches: no attention at the first level, cross, gated and relation
    attention below it."""
    channels, p = list(cfg["channels"]), cfg["patch"]
    if image_size % p:
        raise ValueError(f"patch {p} does not divide the image size {image_size}")
    down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (len(channels) - 1)
    return dict(sample_size=image_size // p, in_channels=3 * p * p, out_channels=3 * p * p, block_out_channels=channels,
                down_block_types=down, up_block_types=[b.replace("Down", "Up") for b in reversed(down)],
                layers_per_block=1, cross_attention_dim=text_dim, relation_dim=text_dim,
                attention_head_dim=cfg["head_dim"], norm_num_groups=8)


class _LayoutItems(torch.utils.data.Dataset):
    """Train-split items keyed by ``(index, step)``: caption and layout dropped by draws from (seed, step, index)."""

    from t2i.train.state import StepKeyedBatchSampler as batch_sampler

    def __init__(self, images: torch.Tensor, rows: list[dict], relations: list[list[str]], cfg: dict):
        self.images, self.rows, self.relations, self.cfg = images, rows, relations, cfg
        self.layouts = [shapes_layout(r["objects"], images.shape[-1]) for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, step = item
        u = np.random.default_rng([self.cfg["seed"] % 2**64, step, index, 11]).random(2)
        return {"image": self.images[index],
                "caption": "" if u[0] < self.cfg["caption_drop"] else self.rows[index]["caption"],
                "layout": [] if u[1] < self.cfg["layout_drop"] else self.layouts[index],
                "relations": self.relations[index]}


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), **{k: [i[k] for i in items]
                                                                  for k in ("caption", "layout", "relations")}}


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the U-Net predicts under the scheduler's ``prediction_type``: the noise, the image or the velocity."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, noise, t)


class _DrawerTask:
    """GLIGEN's objective: MSE of the scheduler's prediction target at uniform timesteps of its betas."""

    def __init__(self, drawer: GLIGENDrawer, scheduler, cfg: dict, identity: dict):
        from t2i.train.task import OptimizerSpec

        self.drawer, self.noise_scheduler = drawer, scheduler
        self.modules, self.frozen, self.ema = {UNET: drawer.unet}, {"text_encoder": drawer.text}, []
        self.optimizers = {UNET: OptimizerSpec([{"params": list(drawer.unet.parameters())}], lr=cfg["lr"],
                                               weight_decay=0.01, warmup_steps=max(1, cfg["steps"] // 20),
                                               grad_clip=1.0, decay="cosine", total_steps=cfg["steps"])}
        self.identity = identity

    def step(self, batch: dict, step: int, ctx) -> dict:
        x0 = self.drawer.latents(batch["image"])
        cond = self.drawer.conditions(batch["caption"], batch["layout"], batch["relations"], x0.device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        target = training_target(self.noise_scheduler, x0, noise, t)
        g = cond["gligen"]
        kwargs = {"gligen": g, "relation": relation_kwargs(cond["relations"], g["boxes"], g["masks"], x0.shape[-2:])}
        eps = ctx.module(UNET)(x_t, t, encoder_hidden_states=cond["context"], cross_attention_kwargs=kwargs,
                               return_dict=False)[0]
        loss = (eps.float() - target).square().mean()
        ctx.backward(loss)
        ctx.optimizer_step(UNET)
        return {"loss": loss.detach()}

    def export(self, weights: dict, out_dir: Path) -> None:
        model = RelationUNet2DConditionModel.from_config(self.modules[UNET].config)
        model.load_state_dict(weights[UNET])
        model.save_pretrained(out_dir / UNET)


@torch.no_grad()
def prediction_error(drawer: GLIGENDrawer, scheduler, images: torch.Tensor, rows: list[dict],
                     relations: list[list[str]], timesteps=(100, 300, 500, 700), seed: int = 0,
                     grounded: bool = True) -> dict[str, float]:
    """The training loss at fixed timesteps with fixed noise from ``seed`` (the same inputs for any network), with
    the true layouts or (``grounded`` False) without."""
    z = drawer.latents(images)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
    layouts = [shapes_layout(r["objects"], images.shape[-1]) for r in rows] if grounded else None
    cond = drawer.conditions([r["caption"] for r in rows], layouts, relations, images.device)
    out = {}
    for t in timesteps:
        tt = torch.full((images.shape[0],), t)
        out[str(t)] = (drawer(scheduler.add_noise(z, noise, tt), tt, cond)
                       - training_target(scheduler, z, noise, tt)).square().mean().item()
    return out


def train_shapes_gligen(dataset_dir: str | Path, out_dir: str | Path, cfg: dict, assets: dict[str, Path]) -> dict:
    """Train the Shapes drawer (module docstring) with the CLIP ``assets["text_encoder"]``; write the pipeline
    folder, ``metrics.json`` (the loss at fixed timesteps with and without the layouts, trained and untrained),
    ``provenance.json`` and ``SHA256SUMS`` into ``out_dir``."""
    from diffusers import DDPMScheduler
    from transformers import AutoTokenizer, CLIPTextModel

    from t2i.checkpoints.hashing import sha256_file
    from t2i.checkpoints.recipes import finish_recipe
    from t2i.latent.data import shapes_train_split
    from t2i.layout.relations import RELATION_PARSERS
    from t2i.text.sdxl_encoders import text_model
    from t2i.train.loop import run_training

    start = time.time()
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if k in DEFAULTS}}
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    work = out_dir / ".train"
    images, rows = shapes_train_split(dataset_dir)
    relations = [RELATION_PARSERS[cfg["relations"]](r["caption"]) for r in rows]
    clip = assets["text_encoder"]
    text = ClipText(text_model(CLIPTextModel, clip).eval().requires_grad_(False),
                    AutoTokenizer.from_pretrained(clip, local_files_only=True))
    scheduler = DDPMScheduler(beta_schedule=cfg["beta_schedule"], prediction_type=cfg["prediction_type"],
                              clip_sample=True)  # pixel space: the predicted image is clipped to [-1, 1]
    config = unet_config(cfg, images.shape[-1], text.dim)
    probe = slice(0, min(256, len(rows)))
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"])
        drawer = GLIGENDrawer(RelationUNet2DConditionModel(**config), text, dict(scheduler.config))
        untrained = prediction_error(drawer.eval(), scheduler, images[probe], rows[probe], relations[probe], seed=cfg["seed"])
    identity = {"recipe": "gligen", "cfg": cfg, "annotations_sha256": sha256_file(dataset_dir / "annotations.jsonl"),
                "unet": config}
    task = _DrawerTask(drawer.train(), scheduler, cfg, identity)
    items = _LayoutItems(images, rows, relations, cfg)
    task.batch_sampler = items.batch_sampler
    result = run_training(task, items,
                          {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": cfg["seed"],
                           "mixed_precision": "auto", "compile": False, "save_every": 250,
                           "log_every": max(1, cfg["steps"] // 20)}, work,
                          inputs={"text_encoder": clip}, collate_fn=collate)
    trained = RelationUNet2DConditionModel.from_pretrained(work / "model" / UNET, local_files_only=True).eval()
    drawer = GLIGENDrawer(trained, text, dict(scheduler.config))
    metrics = {"prediction_mse": prediction_error(drawer, scheduler, images[probe], rows[probe], relations[probe],
                                        seed=cfg["seed"]),
               "prediction_mse_without_layout": prediction_error(drawer, scheduler, images[probe], rows[probe], relations[probe],
                                                       seed=cfg["seed"], grounded=False),
               "prediction_mse_untrained": untrained, "images_scored": len(rows[probe]),
               "train_wall_time_s": result["wall_time_s"], "steps": result["step"],
               "num_parameters": sum(p.numel() for p in trained.parameters())}
    finish_recipe(work, out_dir, metrics, cfg, start, dataset_dir,
                  save=lambda out: save_pipeline(out, trained, text, scheduler))
    return metrics
