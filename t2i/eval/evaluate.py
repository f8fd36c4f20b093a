"""The evaluate stage: every metric family (``t2i.eval.registry``) of one experiment's samples for
one prompt set, in one JSON (``results/{exp}/metrics/{prompt_set}.json``)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from t2i.eval.extractors import create_extractor
from t2i.eval.registry import METRIC_FAMILIES, MetricContext
from t2i.utils.atomic import atomic_write_json, read_jsonl
from t2i.utils.device import default_device
from t2i.utils.provenance import config_hash, device_info, package_versions

log = logging.getLogger(__name__)


def reference_images(dataset_dir: str | Path, prompt_set: str) -> list[Path]:
    """The reference images of a prompt set, in prompt order, each once; ``split-NAME``: every image of
    the split ``NAME`` (``splits/NAME.txt``)."""
    dataset_dir = Path(dataset_dir)
    if prompt_set.startswith("split-"):
        split = dataset_dir / "splits" / f"{prompt_set[len('split-'):]}.txt"
        if not split.is_file():
            raise FileNotFoundError(f"{split}: no such split to take reference images from")
        return [dataset_dir / "images" / f"{name}.png" for name in split.read_text(encoding="utf-8").split()]
    prompts = read_jsonl(dataset_dir / "prompts" / f"{prompt_set}.jsonl")
    names = list(dict.fromkeys(p["reference"] for p in prompts if p.get("reference")))
    if not names:
        raise ValueError(f"{dataset_dir}/prompts/{prompt_set}.jsonl: no reference images to compare against")
    return [dataset_dir / "images" / f"{name}.png" for name in names]


def write_reference_stats(dataset_dir: str | Path, prompt_set: str, extractor_name: str,
                          extractor_path: str | Path, out_path: str | Path) -> dict:
    """Cache the reference statistics of a dataset's prompt set for one extractor."""
    from t2i.eval.fidelity import reference_stats

    extractor = create_extractor(extractor_name, extractor_path, device=default_device())
    return reference_stats(reference_images(dataset_dir, prompt_set), extractor, out_path)


def evaluate_samples(exp: dict, *, prompt_set: str, inputs: dict[str, Path], out_path: str | Path) -> dict:
    """Run every metric family the experiment asks for and that applies; write and return the JSON."""
    start = time.time()
    cfg = exp["evaluate"]
    ctx = MetricContext(exp=exp, prompt_set=prompt_set, inputs={k: Path(v) for k, v in inputs.items()})
    result: dict = {"experiment": exp["name"], "prompt_set": prompt_set}
    for name in cfg["families"]:
        section = METRIC_FAMILIES[name].run(ctx)
        if section is not None:
            result[name] = section
            log.info("%s: %s", name, {k: v for k, v in section.items() if isinstance(v, float)})
    if "fidelity" in result:
        result["fid"] = result["fidelity"].get("fid")
    result["provenance"] = {"evaluate": cfg, "config_hash": config_hash(cfg), "packages": package_versions(),
                            "device": device_info(), "wall_time_s": round(time.time() - start, 2)}
    atomic_write_json(out_path, result)
    return result
