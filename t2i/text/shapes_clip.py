"""The Shapes CLIP: a small transformers ``CLIPModel`` with a word-level tokenizer, trained on Shapes.

It stands in for OpenAI's CLIP wherever a Shapes config needs one (LAFITE's image and text
features, CLIP score, the CLIP text encoders of pixel_sdxl and LPD), so its folder is a plain
``save_pretrained`` CLIP: ``CLIPModel``/``CLIPTextModel``/``CLIPTextModelWithProjection``/
``CLIPVisionModel``, ``CLIPProcessor``, ``CLIPTokenizer`` and ``AutoTokenizer`` all load it offline.

**Tokenizer.** Word-level in effect, CLIP in format: a ``CLIPTokenizer`` (CLIP's own normaliser,
pre-tokenizer, byte-level alphabet and ``</w>`` suffix) whose BPE merges spell every word of the
dataset (short captions, long captions and tags) as one token. A ``tokenizers`` WordLevel model
loads through ``AutoTokenizer`` and, in transformers 5, ``CLIPProcessor``, but ``CLIPTokenizer``
rebuilds a BPE from the file's vocabulary (every word becomes unknown), transformers 4's
``CLIPTokenizerFast`` rejects any non-CLIP backend, and diffusers' SD pipelines load their
``tokenizer/`` as ``CLIPTokenizer``. This BPE loads the same way through all of them. The merges
come from a deterministic BPE run over the sorted word list (ties broken by the pair's text)
until every word is a single symbol; applied by rank they reproduce that run, so each word
encodes to its own token. Ids: 256 byte symbols, the same with ``</w>`` (both sorted), the
merged symbols in merge order, then ``<|startoftext|>`` and ``<|endoftext|>`` (EOS has the
largest id; pad and unk are EOS, as in openai/clip). The text config carries these ids, so
``CLIPTextModel`` pools at the first EOS.

**Training** (:func:`train_shapes_clip`, through :func:`t2i.train.loop.run_training`): the train
split's images, each with one text per step (``captions``: one kind, or ``mixed``: on a random 10%
of the steps every image takes its long caption, on the others its short caption (70%), one of its
tags (15%) or all its tags joined by commas (15%)), a symmetric InfoNCE in which a text
is positive for every image of the batch that has it among its annotations (a tag like "red circle"
fits many images), a learned temperature clamped at 100 like CLIP's, AdamW with warmup and a cosine
decay. No augmentation: a flip would swap left and right. Random choices are keyed by (seed, step,
image), so a resumed run draws the same batches.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from t2i.checkpoints.hashing import sha256_file
from t2i.checkpoints.recipes import finish_recipe
from t2i.data.shapes import PALETTE, SHAPES, SIZES
from t2i.eval.image_folder import iter_batches
from t2i.train.optim import decay_groups
from t2i.train.state import StepKeyedBatchSampler
from t2i.train.task import OptimizerSpec
from t2i.utils.atomic import atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

BOS, EOS, EOW = "<|startoftext|>", "<|endoftext|>", "</w>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = math.log(100.0)
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature
TEXT_KINDS = ("caption", "tag", "tags", "long_caption")
# captions: mixed. A step is a long-caption step with probability LONG_STEP (one kind of step keeps the padding
# short on the others); otherwise each image draws its text kind from MIXED.
LONG_STEP = 0.1
MIXED = {"caption": 0.7, "tag": 0.15, "tags": 0.15}
PROMPTS = tuple(f"a {c} {s}" for c in PALETTE for s in SHAPES)  # zero-shot classes
# The asset keys this recipe reads, and their values where a block leaves them out (the schema's defaults).
DEFAULTS = {"steps": 1000, "batch_size": 64, "lr": 2e-3, "seed": 0, "width": 64, "layers": 2, "patch_size": 4,
            "projection_dim": 64, "captions": "caption"}


# ---------------------------------------------------------------------------- text

def texts_of(row: dict) -> dict[str, list[str]]:
    """An annotation row's texts by kind: ``caption``, ``tag`` (each tag), ``tags`` (joined by commas),
    ``long_caption``."""
    return {"caption": [row["caption"]], "tag": list(row["tags"]), "tags": [", ".join(row["tags"])],
            "long_caption": [row["long_caption"]]}


def _words(texts, tokenizer: CLIPTokenizer) -> list[str]:
    """The sorted pre-tokens (byte-level words) of ``texts`` under CLIP's normaliser and pre-tokenizer."""
    backend = tokenizer.backend_tokenizer
    split, norm = backend.pre_tokenizer.pre_tokenize_str, backend.normalizer.normalize_str
    return sorted({w for t in texts for w, _ in split(norm(t))})


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (in rank order) that turn every word of ``words`` into one ``word</w>`` symbol:
    repeatedly merge the most frequent adjacent pair (ties: the smallest pair) everywhere."""
    seqs = [[*w[:-1], w[-1] + EOW] for w in words]
    merges = []
    while counts := Counter(p for s in seqs for p in zip(s, s[1:])):
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        for k, s in enumerate(seqs):
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == pair:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[k] = out
    return merges


def build_tokenizer(texts, model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary spells every word of ``texts`` as one token (module docstring)."""
    from tokenizers import pre_tokenizers

    words = _words(texts, CLIPTokenizer())
    merges = word_merges(words)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(a + EOW for a in alphabet), *(a + b for a, b in merges), BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
                         model_max_length=model_max_length)


def save_tokenizer_files(tokenizer: CLIPTokenizer, out_dir: Path) -> None:
    """``vocab.json`` and ``merges.txt`` beside ``tokenizer.json``, for the Python ``CLIPTokenizer`` of
    transformers 4 (diffusers pipelines load it); transformers 5 reads ``tokenizer.json``."""
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    atomic_write_json(out_dir / "vocab.json", model["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    atomic_write_text(out_dir / "merges.txt", "#version: 0.2\n" + "".join(m + "\n" for m in merges))


def build_processor(tokenizer: CLIPTokenizer, image_size: int) -> CLIPProcessor:
    """``CLIPProcessor``: ``tokenizer`` and a ``CLIPImageProcessor`` at the dataset's size with CLIP's
    mean and std (a dataset-size image passes through unresized; others are resized and centre-cropped)."""
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size},
                                image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> ``pixel_values`` as the processor makes them (rescale, CLIP mean/std)."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


# ---------------------------------------------------------------------------- model

def clip_config(cfg: dict, *, vocab_size: int, bos_id: int, eos_id: int, max_length: int,
                image_size: int) -> CLIPConfig:
    """A small ``CLIPConfig``: both towers ``width`` wide (heads of 32), ``layers`` deep, MLP 4x; the
    projection size is set on the towers too (the ``*WithProjection`` models read it there)."""
    width, layers = cfg["width"], cfg["layers"]
    tower = {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
             "num_attention_heads": max(1, width // 32), "hidden_act": "quick_gelu",
             "projection_dim": cfg["projection_dim"]}
    if image_size % cfg["patch_size"]:
        raise ValueError(f"patch_size {cfg['patch_size']} does not divide the image size {image_size}")
    return CLIPConfig(
        text_config={**tower, "vocab_size": vocab_size, "max_position_embeddings": max_length,
                     "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id},
        vision_config={**tower, "image_size": image_size, "patch_size": cfg["patch_size"]},
        projection_dim=cfg["projection_dim"], logit_scale_init_value=LOGIT_SCALE_INIT)


def text_features(model: CLIPModel, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L2-normalised projected text features (the same in transformers 4 and 5)."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return F.normalize(model.text_projection(pooled), dim=-1)


def image_features(model: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected image features."""
    return F.normalize(model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)


# ---------------------------------------------------------------------------- data

class _Pairs(torch.utils.data.Dataset):
    """Images (uint8) with their tokenised texts (``ids[i][kind]``: a list of token lists). Item
    ``(index, step)`` gives the image's texts of that step, drawn from ``(seed, step)`` and
    ``(seed, step, index)`` (``captions``: one text of a kind, or ``mixed``), so the batch of a step
    is the same on a resumed run. :meth:`collate` marks a text positive for every image of the batch
    that has the same text among its annotations (a tag such as "red circle" fits many images; plain
    InfoNCE would push those apart). Items carry lists of texts, so an image may bring several."""

    def __init__(self, images: torch.Tensor, ids: list[dict[str, list[list[int]]]], captions: str, seed: int,
                 pad_id: int):
        self.images, self.ids, self.captions, self.seed, self.pad_id = images, ids, captions, seed, pad_id
        table: dict[tuple, int] = {}
        self.text_ids = [{k: [table.setdefault(tuple(t), len(table)) for t in v] for k, v in d.items()} for d in ids]
        self.annotated = [{t for v in d.values() for t in v} for d in self.text_ids]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, list[list[int]], list[int]]:
        """Image ``index`` and its texts of this step (token lists and text ids)."""
        i, step = item
        rng = np.random.default_rng([self.seed, step, i])
        kind = self.captions
        if kind == "mixed":
            kind = "long_caption" if np.random.default_rng([self.seed, step]).random() < LONG_STEP else \
                list(MIXED)[rng.choice(len(MIXED), p=list(MIXED.values()))]
        j = int(rng.integers(len(self.ids[i][kind])))
        return i, [self.ids[i][kind][j]], [self.text_ids[i][kind][j]]

    def collate(self, items: list) -> dict[str, torch.Tensor]:
        """Images, padded ``input_ids`` and ``attention_mask`` of all their texts, and ``positives`` [text, image]."""
        index = [i for i, _, _ in items]
        ids = [t for _, tt, _ in items for t in tt]
        texts = [t for _, _, tt in items for t in tt]
        width = max(len(t) for t in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for k, t in enumerate(ids):
            input_ids[k, :len(t)] = torch.tensor(t)
            mask[k, :len(t)] = 1
        positives = torch.tensor([[t in self.annotated[i] for i in index] for t in texts])
        return {"images": self.images[index], "input_ids": input_ids, "attention_mask": mask,
                "positives": positives}


class _ClipTask:
    """CLIP's contrastive training for the shared loop (module docstring)."""

    def __init__(self, model: CLIPModel, cfg: dict, identity: dict):
        self.model = model
        self.modules, self.frozen, self.ema = {"clip": model}, {}, []
        steps = cfg["steps"]
        self.optimizers = {"clip": OptimizerSpec(decay_groups(model, 0.1), lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6,
                                                 weight_decay=0.1, warmup_steps=max(1, steps // 10), grad_clip=1.0,
                                                 decay="cosine", total_steps=steps)}
        self.batch_sampler = StepKeyedBatchSampler
        self.identity = identity

    def step(self, batch: dict, step: int, ctx) -> dict:
        out = ctx.module("clip")(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 pixel_values=normalize(batch["images"]))
        pos = batch["positives"].float()  # [text, image]
        loss = (F.cross_entropy(out.logits_per_text, pos / pos.sum(1, keepdim=True))
                + F.cross_entropy(out.logits_per_image, pos.T / pos.T.sum(1, keepdim=True))) / 2
        ctx.backward(loss)
        ctx.optimizer_step("clip")
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return {"loss": loss.detach(), "logit_scale": self.model.logit_scale.detach().exp()}

    def export(self, weights: dict, out_dir: Path) -> None:
        model = CLIPModel(self.model.config)
        model.load_state_dict(weights["clip"])
        model.save_pretrained(out_dir)


# ---------------------------------------------------------------------------- evaluation

@torch.no_grad()
def zero_shot(model: CLIPModel, tokenizer, images: torch.Tensor, rows: list[dict]) -> dict:
    """Zero-shot colour+shape accuracy over ``images`` (uint8) with their annotation ``rows``.

    ``top1``: the best of the 18 prompts "a {colour} {shape}" names a pair the image holds;
    ``top1_single``: the same on single-object images; ``*_sized``: the same, each pair scored by
    its best of "a small/large {colour} {shape}" (the captions' wording); ``t2i_top1``: each
    image's short caption retrieves (among these images) one with the same caption.
    """
    model.eval()
    feats = torch.cat([image_features(model, normalize(b)) for b in images.split(256)])

    def embed(texts: list[str]) -> torch.Tensor:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        return text_features(model, enc["input_ids"], enc["attention_mask"])

    held = [{f"a {o['color']} {o['shape']}" for o in r["objects"]} for r in rows]
    single = torch.tensor([len(r["objects"]) == 1 for r in rows])
    out = {}
    sized = torch.stack([feats @ embed([p.replace("a ", f"a {size} ", 1) for p in PROMPTS]).T for size in SIZES])
    for suffix, sims in (("", feats @ embed(list(PROMPTS)).T), ("_sized", sized.amax(0))):
        hit = torch.tensor([PROMPTS[p] in h for p, h in zip(sims.argmax(1).tolist(), held)])
        out[f"top1{suffix}"] = hit.float().mean().item()
        out[f"top1_single{suffix}"] = hit[single].float().mean().item() if single.any() else None
    captions = [r["caption"] for r in rows]
    retrieved = (embed(captions) @ feats.T).argmax(1).tolist()
    out["t2i_top1"] = float(np.mean([captions[j] == c for j, c in zip(retrieved, captions)]))
    return {**out, "num_images": len(rows), "num_single": int(single.sum())}


def _load_images(dataset_dir: Path, rows: list[dict]) -> torch.Tensor:
    paths = [dataset_dir / "images" / f"{r['name']}.png" for r in rows]
    return torch.cat(list(iter_batches(paths, 256)))


# ---------------------------------------------------------------------------- recipe

def train_shapes_clip(dataset_dir: str | Path, out_dir: str | Path, cfg: dict) -> dict:
    """Train the Shapes CLIP on a Shapes dataset's train split; write into ``out_dir`` the ``CLIPModel``
    (``save_pretrained``), the processor and tokenizer files, ``metrics.json`` (zero-shot accuracy on the
    test and holdout splits), ``provenance.json`` and ``SHA256SUMS``. ``cfg``: the asset block (missing
    keys: :data:`DEFAULTS`). The loop's state lives in ``out_dir/.train`` until the end (a killed run
    resumes from it). Returns the metrics."""
    from t2i.train.loop import run_training  # accelerate and tensorboard: only for training

    start = time.time()
    cfg = {**DEFAULTS, **{k: v for k, v in cfg.items() if k in DEFAULTS}}
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    work = out_dir / ".train"
    annotations = dataset_dir / "annotations.jsonl"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: the clip recipe needs a Shapes dataset (annotations.jsonl)")
    rows = read_jsonl(annotations)
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test", "holdout")}
    if len(split["train"]) < cfg["batch_size"] or not split["test"]:
        raise ValueError(f"{annotations}: need at least batch_size ({cfg['batch_size']}) train images and a test split")

    texts = [texts_of(r) for r in rows]
    flat = [t for d in texts for k in TEXT_KINDS for t in d[k]]
    tokenizer = build_tokenizer(flat, model_max_length=1 << 20)
    encoded = iter(tokenizer(flat)["input_ids"])
    ids = [{k: [next(encoded) for _ in d[k]] for k in TEXT_KINDS} for d in texts]
    tokenizer.model_max_length = max_length = max(len(t) for d in ids for v in d.values() for t in v)
    ids = [d for d, r in zip(ids, rows) if r["split"] == "train"]
    images = _load_images(dataset_dir, split["train"])
    image_size = images.shape[-1]
    config = clip_config(cfg, vocab_size=len(tokenizer), bos_id=tokenizer.bos_token_id,
                         eos_id=tokenizer.eos_token_id, max_length=max_length, image_size=image_size)
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"])
        model = CLIPModel(config)

    identity = {"recipe": "clip", "cfg": cfg, "annotations_sha256": sha256_file(annotations)}
    task = _ClipTask(model, cfg, identity)
    data = _Pairs(images, ids, cfg["captions"], cfg["seed"], tokenizer.pad_token_id)
    result = run_training(task, data, {
        "steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": cfg["seed"], "mixed_precision": "auto",
        "compile": False, "save_every": 200, "log_every": max(1, cfg["steps"] // 12)}, work,
        collate_fn=data.collate)

    trained = CLIPModel.from_pretrained(work / "model", local_files_only=True)
    losses = [row["loss"] for row in read_jsonl(work / "model" / "train_log.jsonl")]
    metrics = {s: zero_shot(trained, tokenizer, _load_images(dataset_dir, split[s]), split[s])
               for s in ("test", "holdout") if split[s]}
    metrics |= {"loss_first": losses[0], "final_loss": losses[-1], "logit_scale": trained.logit_scale.exp().item(),
                "train_wall_time_s": result["wall_time_s"], "steps": result["step"],
                "vocab_size": len(tokenizer), "max_length": max_length,
                "num_parameters": sum(p.numel() for p in trained.parameters())}
    test = metrics["test"]
    log.info("shapes CLIP: zero-shot test top-1 %.3f (single objects %s, sized prompts %s), text->image %.3f; "
             "trained %d steps in %.0f s", test["top1"], test["top1_single"], test["top1_single_sized"],
             test["t2i_top1"], result["step"], result["wall_time_s"])

    for path in (work / "model").iterdir():  # the CLIPModel's files, not the loop's records
        if path.name not in ("train_log.jsonl", "provenance.json", "SHA256SUMS"):
            os.replace(path, out_dir / path.name)
    processor = build_processor(tokenizer, image_size)
    processor.save_pretrained(out_dir)
    # transformers 4 (and diffusers) read these: preprocessor_config.json, vocab.json, merges.txt
    processor.image_processor.save_pretrained(out_dir)
    save_tokenizer_files(tokenizer, out_dir)
    finish_recipe(work, out_dir, metrics, cfg, start, dataset_dir)
    return metrics
