"""FID / KID / IS / precision-recall of a samples folder against cached reference statistics.

A small torch-fidelity-style API with two calls:

- ``reference_stats(images, extractor, out_path)`` extracts the reference images once
  (per dataset, prompt set and extractor) and caches what the metrics need in an ``.npz``:
  FID mean/covariance, the KID/PRC features and the IS logits.
- ``compute(samples_dir, reference_stats_path, extractor)`` extracts only the samples.

Features are extracted exactly as ``torch_fidelity.calculate_metrics`` extracts them (same
pixels, same file order, same extractor); IS and precision/recall come from torch-fidelity's
own functions, FID and KID from the same estimators computed on the extractor's device
(``t2i.eval.distances``), so the numbers agree with torch-fidelity's. Time is saved around
the extractor: PNGs are decoded by a thread pool a few batches ahead, batches go to the
device from pinned memory, features stay there, and the reference side is read from the
cache (``benchmarks/eval_speed.py`` measures it).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD
from torch_fidelity.metric_prc import (KEY_METRIC_F_SCORE, KEY_METRIC_PRECISION, KEY_METRIC_RECALL,
                                      prc_features_to_metric)
from tqdm import tqdm

from t2i.eval.distances import frechet_distance, gaussian_statistics, kernel_distance, psd_sqrt
from t2i.eval.extractors import feature_layers
from t2i.eval.image_folder import iter_batches, list_images
from t2i.utils.atomic import atomic_path, read_jsonl
from t2i.utils.device import default_device

# our result key -> torch_fidelity.calculate_metrics's key
TORCH_FIDELITY_KEYS = {
    "fid": KEY_METRIC_FID,
    "kid_mean": KEY_METRIC_KID_MEAN, "kid_std": KEY_METRIC_KID_STD,
    "isc_mean": KEY_METRIC_ISC_MEAN, "isc_std": KEY_METRIC_ISC_STD,
    "precision": KEY_METRIC_PRECISION, "recall": KEY_METRIC_RECALL, "f_score": KEY_METRIC_F_SCORE,
}
DEFAULT_METRICS = ("fid", "kid", "isc", "prc")
# torch-fidelity's defaults, spelled out so both sides of a comparison use the same ones
KID_SUBSETS, ISC_SPLITS, PRC_NEIGHBORHOOD, RNG_SEED = 100, 10, 3, 2020
# images per extractor batch: the Inception forward on an H200 runs ~25% faster at 500 than at 200
BATCH_SIZE = 500


def sample_files(samples_dir: str | Path) -> list[Path]:
    """The images of a samples dir: the files its ``index.jsonl`` lists, or every image in it."""
    samples_dir = Path(samples_dir)
    index = samples_dir / "index.jsonl"
    if index.is_file():
        return list_images(samples_dir / row["file"] for row in read_jsonl(index))
    return list_images(samples_dir)


def extract_features(paths: Sequence[Path], extractor: FeatureExtractorBase, *, batch_size: int = BATCH_SIZE,
                     num_workers: int | None = None, desc: str = "features") -> dict[str, torch.Tensor]:
    """Every requested feature of ``extractor`` for ``paths``, in order, as float32 tensors on its device.

    No per-batch copy back to the host stalls the next batch.
    """
    device = next(extractor.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in extractor.features_list}
    batches = iter_batches(paths, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    with torch.inference_mode(), tqdm(total=len(paths), desc=desc, unit="img", mininterval=5) as bar:
        for batch in batches:
            out = extractor(batch.to(device, non_blocking=True))
            for name, value in zip(extractor.features_list, out):
                chunks[name].append(value)
            bar.update(len(batch))
    return {name: torch.cat(values).float() for name, values in chunks.items()}


def _needed_layers(extractor: FeatureExtractorBase, metrics: Iterable[str]) -> dict[str, str]:
    layers = {m: feature_layers(extractor.get_name())[m] for m in metrics}
    missing = set(layers.values()) - set(extractor.features_list)
    if missing:
        raise ValueError(f"extractor {extractor.get_name()} was built without features {sorted(missing)}")
    return layers


def reference_stats(images: str | os.PathLike | Iterable[str | os.PathLike], extractor: FeatureExtractorBase,
                    out_path: str | Path, *, batch_size: int = BATCH_SIZE, num_workers: int | None = None) -> dict:
    """Extract reference ``images`` (a directory or a list of files) and cache them in ``out_path`` (.npz).

    Stores FID ``mu``/``sigma`` and the square root of ``sigma``, the features KID and PRC
    read, and the IS logits, with a JSON ``meta`` record (extractor, weights hash, layers,
    image count). Returns ``meta``.
    """
    start = time.time()
    paths = list_images(images)
    layers = _needed_layers(extractor, DEFAULT_METRICS)
    features = extract_features(paths, extractor, batch_size=batch_size, num_workers=num_workers, desc="reference")
    stats = gaussian_statistics(features[layers["fid"]])
    stats["sigma_sqrt"] = psd_sqrt(stats["sigma"])  # cached: each evaluation then needs one eigvalsh only
    stats = {k: v.cpu().numpy() for k, v in stats.items()}
    meta = {
        "extractor": extractor.get_name(),
        "weights_sha256": getattr(extractor, "weights_sha256", None),
        "feature_layers": layers,
        "num_images": len(paths),
        "seconds": round(time.time() - start, 3),
    }
    arrays = {"fid_mu": stats["mu"], "fid_sigma": stats["sigma"], "fid_sigma_sqrt": stats["sigma_sqrt"],
              "meta": np.array(json.dumps(meta))}
    for layer in {layers["kid"], layers["prc"], layers["isc"]}:
        arrays[f"features.{layer}"] = features[layer].cpu().numpy()
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return meta


def load_reference_stats(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a reference-statistics file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"reference statistics not found: {path} (made by `rule reference_stats`)")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def compute(samples_dir: str | Path, reference_stats_path: str | Path, extractor: FeatureExtractorBase, *,
            metrics: Sequence[str] = DEFAULT_METRICS, batch_size: int = BATCH_SIZE, device: str | torch.device | None = None,
            num_workers: int | None = None, kid_subset_size: int = 1000) -> dict:
    """Fidelity metrics of the images in ``samples_dir`` against cached reference statistics.

    Returns every figure asked for (``fid``, ``kid_mean``/``kid_std``, ``isc_mean``/``isc_std``
    with ``reference_isc_mean``, ``precision``/``recall``/``f_score``), the extractor, its
    layers and weights hash, image counts, the KID subset size actually used (capped at the
    smaller image count) and the extraction speed. The samples play torch-fidelity's input1
    (generated), the reference its input2: precision asks how many samples look real.
    """
    unknown = set(metrics) - set(DEFAULT_METRICS)
    if unknown:
        raise ValueError(f"evaluate.metrics: unknown metrics {sorted(unknown)} (known: {', '.join(DEFAULT_METRICS)})")
    meta, ref = load_reference_stats(reference_stats_path)
    name = extractor.get_name()
    if meta["extractor"] != name:
        raise ValueError(f"{reference_stats_path}: computed with extractor {meta['extractor']}, not {name}")
    weights_sha256 = getattr(extractor, "weights_sha256", None)
    if meta["weights_sha256"] and weights_sha256 and meta["weights_sha256"] != weights_sha256:
        raise ValueError(f"{reference_stats_path}: computed with other {name} weights; recompute it")
    layers = _needed_layers(extractor, metrics)

    device = torch.device(device) if device is not None else default_device()
    extractor.to(device)
    paths = sample_files(samples_dir)
    start = time.time()
    features = extract_features(paths, extractor, batch_size=batch_size, num_workers=num_workers, desc="samples")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.time() - start

    result: dict = {
        "extractor": name, "weights_sha256": meta["weights_sha256"], "feature_layers": layers,
        "num_samples": len(paths), "num_reference": meta["num_images"],
        "extract_seconds": round(seconds, 3), "images_per_second": round(len(paths) / max(seconds, 1e-9), 1),
    }

    def reference(metric: str) -> torch.Tensor:
        return torch.from_numpy(ref[f"features.{layers[metric]}"])

    if "fid" in metrics:
        stats = gaussian_statistics(features[layers["fid"]])
        ref_sqrt = ref.get("fid_sigma_sqrt")  # absent from caches written before it was stored
        result["fid"] = frechet_distance(stats["mu"], stats["sigma"], torch.from_numpy(ref["fid_mu"]),
                                         torch.from_numpy(ref["fid_sigma"]),
                                         sigma2_sqrt=None if ref_sqrt is None else torch.from_numpy(ref_sqrt))
    if "kid" in metrics:
        subset = min(kid_subset_size, len(paths), len(reference("kid")))
        kid = kernel_distance(features[layers["kid"]], reference("kid"), subsets=KID_SUBSETS, subset_size=subset,
                              seed=RNG_SEED)
        result.update(kid_mean=kid["mean"], kid_std=kid["std"], kid_subset_size=subset)
    tf_result: dict = {}  # torch-fidelity's keys
    if "isc" in metrics:
        tf_result.update(isc_features_to_metric(features[layers["isc"]].cpu(), ISC_SPLITS, True, RNG_SEED))
        ref_isc = isc_features_to_metric(reference("isc"), ISC_SPLITS, True, RNG_SEED)
        result["reference_isc_mean"] = ref_isc[KEY_METRIC_ISC_MEAN]
    if "prc" in metrics:
        tf_result.update(prc_features_to_metric(features[layers["prc"]].cpu(), reference("prc"), verbose=False,
                                                prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=10000,
                                                save_cpu_ram=False))
    result.update({ours: tf_result[theirs] for ours, theirs in TORCH_FIDELITY_KEYS.items() if theirs in tf_result})
    return result


def _against(ctx, reference: str) -> dict:
    from t2i.eval.extractors import create_extractor

    cfg = ctx.exp["evaluate"]
    extractor = create_extractor(cfg["extractor"], ctx.inputs["extractor"], device=default_device())
    return compute(ctx.samples_dir, ctx.inputs[reference], extractor, metrics=cfg["metrics"],
                   batch_size=cfg["batch_size"], kid_subset_size=cfg["kid_subset_size"])


def fidelity_metric_family(ctx) -> dict:
    """The ``fidelity`` metric family: ``evaluate.metrics`` against the prompt set's reference statistics."""
    return _against(ctx, "reference")


def fidelity_train_metric_family(ctx) -> dict:
    """The ``fidelity_train`` metric family: the same against the whole training split (LAFITE's protocol)."""
    return _against(ctx, "reference_train")
