"""Fidelity-metric speed: torch_fidelity.calculate_metrics vs t2i.eval.fidelity on the same folders and weights.

    python benchmarks/eval_speed.py                        # 2 x 10000 PNGs at 256 px (GPU if there is one)
    python benchmarks/eval_speed.py --num 300 --size 64    # a quick CPU run
    python benchmarks/eval_speed.py --weights results/pretrained/inception   # real Inception weights

Without ``--weights`` a randomly initialised InceptionV3 is saved to the work dir and used
by both sides: speed does not depend on the weights, and the figures still have to agree.
Times: torch-fidelity (it extracts both folders every call), ours cold (reference
statistics computed and cached, then the samples) and ours warm (reference statistics
read from the cache), each for one evaluation of the samples folder against the reference
folder. Every run includes building the extractor; PNGs are in the page cache for all of
them. Also printed: PNG decode alone (Pillow vs our decoder, same thread pool) and how a
warm evaluation splits into extraction and metric math.
"""
from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn as nn
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from PIL import Image, ImageDraw

from t2i.eval import extractors, fidelity
from t2i.eval.image_folder import decode_rgb, default_workers, load_pil_rgb

PALETTES = {"a": [(230, 30, 30), (30, 200, 30), (30, 30, 230)], "b": [(240, 220, 20), (220, 30, 220), (20, 220, 230)]}


def _draw(args: tuple[Path, int, int, str]) -> None:
    path, seed, size, palette = args
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):
        s = rng.randint(size // 6, size // 3)
        x, y = rng.randrange(size - s), rng.randrange(size - s)
        colour = rng.choice(PALETTES[palette] + PALETTES["a"])
        getattr(draw, rng.choice(["ellipse", "rectangle"]))((x, y, x + s, y + s), fill=colour)
    img.save(path)


def make_folder(root: Path, n: int, size: int, palette: str) -> Path:
    """``n`` PNGs of 1-3 flat shapes (reused when already there)."""
    root.mkdir(parents=True, exist_ok=True)
    todo = [(root / f"{i:06d}.png", i * 2 + (palette == "b"), size, palette) for i in range(n)
            if not (root / f"{i:06d}.png").exists()]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_draw, todo, chunksize=64))
    return root


def random_inception(path: Path) -> Path:
    """torch-fidelity's InceptionV3 architecture with random (variance-preserving) weights."""
    cls = tf_inception.FeatureExtractorInceptionV3
    load, torch_load = cls.load_state_dict, tf_inception.torch.load
    cls.load_state_dict, tf_inception.torch.load = (lambda self, sd: None), (lambda *a, **k: None)
    try:
        torch.manual_seed(0)
        net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    finally:
        cls.load_state_dict, tf_inception.torch.load = load, torch_load
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=10000, help="images per folder")
    ap.add_argument("--size", type=int, default=256, help="image edge in pixels")
    ap.add_argument("--workdir", type=Path, default=Path("results/benchmarks/eval_speed"))
    ap.add_argument("--weights", type=Path, help="Inception weights file or folder (default: random weights)")
    ap.add_argument("--batch-size", type=int, default=fidelity.BATCH_SIZE, help="for both contenders")
    ap.add_argument("--num-workers", type=int, help="decode threads (default: one per core, at most 16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    folder_a = make_folder(args.workdir / f"a_{args.num}_{args.size}", args.num, args.size, "a")
    folder_b = make_folder(args.workdir / f"b_{args.num}_{args.size}", args.num, args.size, "b")
    for p in [*folder_a.iterdir(), *folder_b.iterdir()]:  # page cache warm for every contender
        p.read_bytes()
    weights = (extractors.resolve_weights("inception-v3-compat", args.weights) if args.weights
               else random_inception(args.workdir / "random-inception" / extractors.INCEPTION_FILENAME))
    kid_subset = min(1000, args.num)
    ref_path = args.workdir / f"ref_b_{args.num}_{args.size}.npz"
    print(f"{args.num} + {args.num} PNGs at {args.size} px, device {args.device}, batch {args.batch_size}, "
          f"weights {weights}{' (random)' if not args.weights else ''}")

    theirs, t_theirs = timed(lambda: torch_fidelity.calculate_metrics(
        input1=str(folder_a), input2=str(folder_b), fid=True, isc=True, kid=True, cuda=args.device == "cuda",
        batch_size=args.batch_size, kid_subset_size=kid_subset, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(weights), verbose=False))

    def ours() -> dict:
        fe = extractors.create_extractor("inception-v3-compat", weights, device=args.device)
        if not ref_path.exists():
            fidelity.reference_stats(folder_b, fe, ref_path, batch_size=args.batch_size, num_workers=args.num_workers)
        return fidelity.compute(folder_a, ref_path, fe, metrics=("fid", "kid", "isc"), batch_size=args.batch_size,
                                device=args.device, num_workers=args.num_workers, kid_subset_size=kid_subset)

    ref_path.unlink(missing_ok=True)
    cold, t_cold = timed(ours)
    warm, t_warm = timed(ours)

    print(f"\n{'one evaluation':<26}{'seconds':>10}{'images/s':>12}{'speed-up':>10}")
    for name, seconds, images in (("torch-fidelity", t_theirs, 2 * args.num), ("t2i cold (+ref stats)", t_cold,
                                  2 * args.num), ("t2i warm (cached ref)", t_warm, args.num)):
        print(f"{name:<26}{seconds:>10.2f}{images / seconds:>12.1f}{t_theirs / seconds:>9.2f}x")
    print(f"  warm: extraction {warm['extract_seconds']:.2f} s ({warm['images_per_second']:.0f} images/s), "
          f"everything else (extractor build, FID/KID/IS) {t_warm - warm['extract_seconds']:.2f} s")
    files = sorted(folder_a.iterdir())
    workers = args.num_workers or default_workers()
    for name, decode in (("Pillow", load_pil_rgb), ("t2i", decode_rgb)):
        with ThreadPoolExecutor(workers) as pool:
            _, seconds = timed(lambda: list(pool.map(decode, files, chunksize=64)))
        print(f"  PNG decode, {name:<7} {workers} threads: {len(files) / seconds:8.0f} images/s")
    print(f"\n{'metric':<12}{'torch-fidelity':>20}{'t2i cold':>20}{'t2i warm':>20}")
    for key in ("fid", "kid_mean", "kid_std", "isc_mean", "isc_std"):
        print(f"{key:<12}{theirs[fidelity.TORCH_FIDELITY_KEYS[key]]:>20.8g}{cold[key]:>20.8g}{warm[key]:>20.8g}")


if __name__ == "__main__":
    main()
