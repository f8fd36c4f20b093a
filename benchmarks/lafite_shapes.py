"""LAFITE on Shapes-T2I, language-free: does training on images only transfer to text prompts?

    .venv/bin/python benchmarks/lafite_shapes.py --kimg 20                 # CPU
    python3 benchmarks/lafite_shapes.py --kimg 300 --workdir /tmp/lafite   # a GPU box
    python3 benchmarks/lafite_shapes.py --paper-speed                      # sec/kimg of the 256-px paper network

Generates ``config.yaml``'s ``shapes32`` dataset, trains the Shapes CLIP (``source: trained``,
recipe ``clip``, its defaults), writes LAFITE's dataset zip and trains ``lafite`` (preset
``shapes32``, the seed command's loss: language-free, itd = itc = 10, gamma 10, mirror) through the
system's own code, then samples the ``test`` prompts and prints the Shapes accuracies of three
generators side by side: trained and conditioned on the prompts' CLIP text features; the same
network untrained; and the trained one conditioned on random unit features instead of the prompts.
``--paper-speed`` times training steps (the four phases, batch 32, R1 every 16, path length every 4,
the itc loss through a ViT-B/32-shaped CLIP image tower) of the paper's 256-px G and D on random
data and prints sec/kimg (``--precision``: fp32, tf32 or bf16 autocast).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES32 = {"seed": 0, "image_size": 32, "num_train": 4000, "num_test": 200, "num_holdout": 100, "max_objects": 3,
            "holdout_pairs": ["red triangle", "blue circle"]}
LOSS = {"mixing_prob": 1.0, "image_noise": 0.75, "text_noise": 0.1, "temp": 0.5, "lam": 0.0, "itd": 10.0, "itc": 10.0,
        "iid": 0.0, "iic": 0.0, "gamma": 10.0, "pl_weight": 2.0, "style_mixing": 0.9, "mirror": True, "clip_crop": 0.5}
TRAIN = {"batch": 32, "lr": 0.0025, "betas": [0.0, 0.99], "ema_kimg": None, "ema_rampup": 0.05, "G_reg_interval": 4,
         "D_reg_interval": 16, "kimg_per_tick": 4, "snap": 25, "seed": 0, "grid_prompts": 8, "workers": 2, "mixed_precision": "no",
         "compile": False}


def experiment(kimg: float, settings: list[str], num_images: int | None = None) -> dict:
    """The benchmark's experiment; ``settings`` are ``block.key=value`` overrides (YAML values)."""
    exp = {"name": "shapes_lafite", "system": "lafite", "prepare": {"seed": 0, "batch_size": 256},
           "model": {"preset": "shapes32", "overrides": {}, "projection": "batch_sum"}, "loss": dict(LOSS),
           "train": {**TRAIN, "kimg": kimg},
           "sample": {"seed": 0, "num_images": num_images, "gen_bsz": 200, "compile": False, "truncation_psi": 1.0,
                      "noise_mode": "const"}}
    for setting in settings:
        key, _, value = setting.partition("=")
        block, _, name = key.partition(".")
        if block not in exp or not isinstance(exp[block], dict) or not name or not value:
            raise SystemExit(f"--set {setting!r}: expected BLOCK.KEY=VALUE with BLOCK one of model, loss, train")
        exp[block][name] = yaml.safe_load(value)
    return exp


def shapes_transfer(args) -> None:
    from benchmarks.shapes_default import random_text_features, score_samples, untrained_model
    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.data.shapes import generate
    from t2i.systems.lafite import LafiteSystem
    from t2i.text.shapes_clip import train_shapes_clip
    from t2i.utils.atomic import read_jsonl

    work = Path(args.workdir)
    dataset, clip, prepared = work / "dataset", work / "clip", work / "prepared"
    times = {}
    if not (dataset / "SHA256SUMS").is_file():
        generate(dataset, dict(SHAPES32))
        write_sha256sums(dataset)
    if not (clip / "SHA256SUMS").is_file():
        start = time.time()
        metrics = train_shapes_clip(dataset, clip, {})
        times["clip"] = time.time() - start
        print(f"Shapes CLIP zero-shot top-1 on test: {metrics['test']['top1']:.3f} "
              f"(single objects {metrics['test']['top1_single']:.3f})")
    prompts = dataset / "prompts" / "test.jsonl"
    num_images = args.images_per_prompt * len(read_jsonl(prompts))
    exp, system = experiment(args.kimg, args.set, num_images), LafiteSystem()
    if not (prepared / "SHA256SUMS").is_file():
        start = time.time()
        system.prepare(exp, {"dataset": dataset, "clip": clip}, prepared)
        write_sha256sums(prepared)
        times["prepare"] = time.time() - start
    run = work / "runs" / ("_".join(args.set) or "defaults")  # a larger --kimg continues the run's training
    train_dir = run / "train"
    start = time.time()
    system.train(exp, {"dataset": dataset, "clip": clip, "prepared": prepared}, train_dir)
    times["train"] = time.time() - start
    inputs = {"dataset": dataset, "clip": clip, "model": train_dir / "model"}
    results = {"trained, prompt features": score_samples(system, exp, inputs, prompts, run / "samples_trained")}
    untrained = {**inputs, "model": untrained_model(train_dir / "model", run / "untrained", exp["train"]["seed"])}
    results["untrained"] = score_samples(system, exp, untrained, prompts, run / "samples_untrained")

    with random_text_features():
        results["trained, random features"] = score_samples(system, exp, inputs, prompts, run / "samples_random")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\nLAFITE shapes32, language-free, {' '.join(args.set) or 'benchmark defaults'}, {args.kimg:g} kimg at batch 32 on {device} "
          f"({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}); seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(f"{'generator':<28} {'single-object prompt_acc':>24} {'object_acc':>11} {'prompt_acc':>11}")
    for label, agg in results.items():
        single = agg["by_type"]["single"]["prompt_acc"]
        print(f"{label:<28} {single:>24.3f} {agg['object_acc']:>11.3f} {agg['prompt_acc']:>11.3f}")


def paper_speed(args) -> None:
    """sec/kimg of the paper's 256-px networks through the LAFITE task's step, on random data."""
    from accelerate import Accelerator
    from transformers import CLIPConfig, CLIPModel

    from t2i.models.lafite import lafite_from_preset
    from t2i.systems.lafite import ClipImageTower, LafiteTask
    from t2i.train.loop import _build_optimizer, _Context

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.manual_seed(0)
    G, D = lafite_from_preset("paper256", f_dim=512)
    clip = CLIPModel(CLIPConfig())  # transformers' defaults are ViT-B/32's shapes; random weights time the same
    tower = ClipImageTower(clip, [0.481, 0.458, 0.408], [0.269, 0.261, 0.276], ratio=LOSS["clip_crop"])
    exp = {"loss": dict(LOSS), "train": {**TRAIN, "kimg": 1}}
    task = LafiteTask(G.to(device), D.to(device), tower.to(device).requires_grad_(False), exp, meta={})
    task.buffers = {k: v.to(device) for k, v in task.buffers.items()}
    built = {n: _build_optimizer(s) for n, s in task.optimizers.items()}
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if args.precision == "bf16" else "no")
    ctx = _Context(acc, task.modules, task.frozen, {n: o for n, (o, _) in built.items()}, task.optimizers,
                   {n: m for n, (_, m) in built.items()})
    batch = {"image": torch.randint(0, 256, (32, 3, 256, 256), dtype=torch.uint8, device=device),
             "img_feature": torch.randn(32, 512, device=device)}

    def steps(n, first):
        for s in range(first, first + n):
            ctx.begin(s)
            with acc.autocast():  # what the loop's prepared modules do: forward under autocast
                task.step(batch, s, ctx)
        if device.type == "cuda":
            torch.cuda.synchronize()

    steps(16, 0)  # warm-up, one full regularisation cycle
    start = time.time()
    steps(args.speed_steps, 16)
    seconds = time.time() - start
    per_kimg = seconds / (args.speed_steps * 32 / 1000)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = f", peak {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if device.type == "cuda" else ""
    print(f"LAFITE paper256 (G {sum(p.numel() for p in G.parameters()) / 1e6:.1f} M, "
          f"D {sum(p.numel() for p in D.parameters()) / 1e6:.1f} M, CLIP ViT-B/32 image tower on fakes), batch 32, "
          f"{args.precision}, {name}: {per_kimg:.2f} s/kimg{peak} ({args.speed_steps} steps, R1 every 16, "
          f"path length every 4)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kimg", type=float, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="BLOCK.KEY=VALUE",
                    help="override an experiment key, e.g. --set loss.gamma=1 (repeatable)")
    ap.add_argument("--workdir", default="/tmp/t2i-lafite-bench")
    ap.add_argument("--images-per-prompt", type=int, default=5, help="samples per test prompt (seeds)")
    ap.add_argument("--paper-speed", action="store_true")
    ap.add_argument("--speed-steps", type=int, default=32)
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="bf16",
                    help="--paper-speed: float32, float32 with TF32 matmuls/convolutions, or bf16 autocast")
    args = ap.parse_args()
    if args.paper_speed:
        paper_speed(args)
    else:
        shapes_transfer(args)


if __name__ == "__main__":
    main()
