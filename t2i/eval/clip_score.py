"""CLIP score of a samples folder: how well each image matches its own prompt.

Score per image = 100 * max(cos(image embedding, prompt embedding), 0), the convention of
torchmetrics' CLIPScore. The model is a local transformers folder (``save_pretrained``
layout: CLIPModel weights + CLIPProcessor files) placed by ``rule pretrained``; nothing
is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPModel, CLIPProcessor

from t2i.eval.image_folder import iter_batches
from t2i.utils.atomic import read_jsonl


def load_clip(clip_dir: str | Path, device: str | torch.device = "cpu") -> tuple[CLIPModel, CLIPProcessor]:
    """CLIPModel (eval mode, on ``device``) and CLIPProcessor from a local folder."""
    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(f"CLIP model not found: {clip_dir} needs a save_pretrained folder "
                                "(config.json, weights, tokenizer and processor files)")
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval().to(device)
    return model, CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)


@torch.inference_mode()
def clip_score_folder(samples_dir: str | Path, clip_dir: str | Path, *, batch_size: int = 64,
                      device: str | torch.device | None = None, num_workers: int | None = None) -> dict:
    """Mean and std of the CLIP score over a samples folder (its ``index.jsonl`` pairs images and prompts)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = load_clip(clip_dir, device)
    samples_dir = Path(samples_dir)
    rows = read_jsonl(samples_dir / "index.jsonl")
    max_length = model.config.text_config.max_position_embeddings
    scores = []
    batches = iter_batches([samples_dir / r["file"] for r in rows], batch_size, num_workers=num_workers)
    for start, images in zip(range(0, len(rows), batch_size), batches):
        prompts = [r["prompt"] for r in rows[start:start + batch_size]]
        inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding=True, truncation=True,
                           max_length=max_length).to(device)
        out = model(**inputs)  # image_embeds and text_embeds come L2-normalised
        scores.append(100 * (out.image_embeds * out.text_embeds).sum(-1).clamp(min=0).float().cpu())
    scores = torch.cat(scores)
    return {"clip_score": scores.mean().item(), "clip_score_std": scores.std(unbiased=False).item(),
            "num_images": len(scores), "model": str(clip_dir)}


def clip_score_metric_family(ctx) -> dict | None:
    """The ``clip_score`` metric family (when the experiment names a CLIP asset)."""
    if "clip" not in ctx.inputs:
        return None
    return clip_score_folder(ctx.samples_dir, ctx.inputs["clip"])
