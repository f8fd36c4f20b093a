"""The evaluate stage: every metric of one experiment's samples for one prompt set, in one JSON.

- Shapes compositional accuracy (``t2i.eval.shapes``) when the prompt set carries specs;
- FID / KID / IS (/ precision-recall) against cached reference statistics (``t2i.eval.fidelity``);
- CLIP score when the experiment names a CLIP asset.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from t2i.eval.extractors import create_extractor
from t2i.eval.fidelity import compute, default_device, reference_stats
from t2i.utils.atomic import atomic_write_json, read_jsonl
from t2i.utils.provenance import config_hash, device_info, package_versions

log = logging.getLogger(__name__)


def reference_images(dataset_dir: str | Path, prompt_set: str) -> list[Path]:
    """The reference images of a prompt set, in prompt order, each once."""
    dataset_dir = Path(dataset_dir)
    prompts = read_jsonl(dataset_dir / "prompts" / f"{prompt_set}.jsonl")
    names = list(dict.fromkeys(p["reference"] for p in prompts if p.get("reference")))
    if not names:
        raise ValueError(f"{dataset_dir}/prompts/{prompt_set}.jsonl: no reference images to compare against")
    return [dataset_dir / "images" / f"{name}.png" for name in names]


def write_reference_stats(dataset_dir: str | Path, prompt_set: str, extractor_name: str,
                          extractor_path: str | Path, out_path: str | Path) -> dict:
    """Cache the reference statistics of a dataset's prompt set for one extractor."""
    extractor = create_extractor(extractor_name, extractor_path, device=default_device())
    return reference_stats(reference_images(dataset_dir, prompt_set), extractor, out_path)


def evaluate_samples(exp: dict, *, prompt_set: str, samples_dir: str | Path, dataset_dir: str | Path,
                     reference_stats: str | Path, extractor_path: str | Path, out_path: str | Path,
                     clip_dir: str | Path | None = None) -> dict:
    """Write ``results/{exp}/metrics/{prompt_set}.json`` and return it."""
    start = time.time()
    cfg = exp["evaluate"]
    prompts_path = Path(dataset_dir) / "prompts" / f"{prompt_set}.jsonl"
    result: dict = {"experiment": exp["name"], "prompt_set": prompt_set, "samples_dir": str(samples_dir)}

    if any(p.get("spec") for p in read_jsonl(prompts_path)):
        from t2i.eval.shapes import score_folder

        shapes = score_folder(samples_dir, prompts_path)
        result["shapes"] = shapes["aggregate"]
        log.info("shapes accuracy: %s", shapes["aggregate"])

    extractor = create_extractor(cfg["extractor"], extractor_path, device=default_device())
    result["fidelity"] = compute(samples_dir, reference_stats, extractor, metrics=cfg["metrics"],
                                 batch_size=cfg["batch_size"], kid_subset_size=cfg["kid_subset_size"])
    result["fid"] = result["fidelity"].get("fid")
    log.info("fidelity: %s", {k: v for k, v in result["fidelity"].items() if isinstance(v, float)})

    if clip_dir is not None:
        from t2i.eval.clip_score import clip_score_folder

        result["clip_score"] = clip_score_folder(samples_dir, clip_dir)

    result["provenance"] = {"evaluate": cfg, "config_hash": config_hash(cfg), "packages": package_versions(),
                            "device": device_info(), "wall_time_s": round(time.time() - start, 2)}
    atomic_write_json(out_path, result)
    return result
