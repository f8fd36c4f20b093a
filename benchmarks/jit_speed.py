"""JiT-Text training and sampling throughput with cached pooled text features.

    python benchmarks/jit_speed.py                          # JiT-B/16-Text, 256 px, on CUDA
    python benchmarks/jit_speed.py --compile --loop         # torch.compile; also through t2i's training loop
    python benchmarks/jit_speed.py --preset JiT-T/8-Text --size 32 --batch 64 --device cpu

The frozen LLM never runs in a training step here (t2i caches its pooled features in
`rule prepare`), and sampling encodes each prompt once. `text_dim` 3072 is llm-jp-3-3.7b's
hidden size. Prints images/s for training steps (AdamW, bf16 autocast on CUDA) and for
the ODE sampler (Heun, CFG inside [interval_min, interval_max] only). ``--loop`` also times
the same network as the ``jit`` system's training task in ``t2i.train.loop.run_training``
(accelerate, two EMAs, gradient clipping, caption dropout, DataLoader workers), the path every
workflow training job takes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time

import torch

from t2i.diffusion.flow import jit_loss, sample
from t2i.models.jit import jit_from_preset
from t2i.systems.jit import JiTTask
from t2i.train.loop import run_training


class _SyntheticImages(torch.utils.data.Dataset):
    """Random images in [-1, 1] with random pooled text features (what the JiT dataset yields)."""

    def __init__(self, n: int, size: int, text_dim: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.text = torch.randn(n, text_dim, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "text": self.text[i]}


def loop_images_per_second(args, compile: bool) -> float:
    """Steady-state images/s of ``run_training`` (timed between log rows after the first)."""
    torch.manual_seed(0)
    model = jit_from_preset(args.preset, input_size=args.size, text_dim=args.text_dim)
    data = _SyntheticImages(4 * args.batch, args.size, args.text_dim)

    every = 10
    cfg = {"steps": every * (2 + args.steps // every), "batch_size": args.batch, "blr": 5e-5, "log_every": every,
           "save_every": 10 ** 9, "ema_decays": [0.9999, 0.9996], "num_workers": 4, "compile": compile}
    objective = {"P_mean": -0.8, "P_std": 0.8, "noise_scale": 1.0, "t_eps": 0.05, "cond_dropout": 0.1}
    task = JiTTask(model, {"model": objective, "train": cfg}, torch.zeros(args.text_dim),
                   meta={"image_size": args.size, "text_dim": args.text_dim, "noise_scale": 1.0, "t_eps": 0.05})
    with tempfile.TemporaryDirectory() as out:
        run_training(task, data, cfg, out)
        rows = [json.loads(line) for line in open(f"{out}/model/train_log.jsonl")]
    return (rows[-1]["step"] - rows[1]["step"]) * args.batch / (rows[-1]["time"] - rows[1]["time"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="JiT-B/16-Text")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--text-dim", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 warm-up steps)")
    ap.add_argument("--gen-batch", type=int, default=128)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network (timed after compiling)")
    ap.add_argument("--loop", action="store_true", help="also time t2i's training loop (eager and compiled)")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = jit_from_preset(args.preset, input_size=args.size, text_dim=args.text_dim).to(device)
    params = sum(p.numel() for p in model.parameters())
    net = torch.compile(model) if args.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).clamp(-1, 1)
    text = torch.randn(args.batch, args.text_dim, device=device)

    def train_step() -> None:
        with autocast:
            loss = jit_loss(net, x, text, P_mean=-0.8, P_std=0.8, noise_scale=1.0, t_eps=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        train_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    _sync(device)
    train_ips = args.steps * args.batch / (time.perf_counter() - start)

    model.eval()
    noise = torch.randn(args.gen_batch, 3, args.size, args.size, device=device)
    cond = torch.randn(args.gen_batch, args.text_dim, device=device)
    uncond = torch.zeros_like(cond)
    kwargs = dict(steps=args.sample_steps, method="heun", cfg=2.9, interval_min=0.1, interval_max=1.0, t_eps=0.05,
                  noise_scale=1.0)
    with torch.no_grad(), autocast:
        sample(net, noise, cond, uncond, **{**kwargs, "steps": 2})
        _sync(device)
        start = time.perf_counter()
        sample(net, noise, cond, uncond, **kwargs)
        _sync(device)
    sample_ips = args.gen_batch / (time.perf_counter() - start)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.preset} at {args.size} px, {params / 1e6:.1f}M parameters, {name}"
          f"{', torch.compile' if args.compile else ''}")
    print(f"  training: {train_ips:8.1f} images/s (batch {args.batch}, cached text features)")
    print(f"  sampling: {sample_ips:8.2f} images/s ({args.sample_steps} Heun steps, CFG interval 0.1-1.0, batch {args.gen_batch})")
    if args.loop:
        del model, net, opt
        for compiled in (False, True):
            ips = loop_images_per_second(args, compiled)
            print(f"  t2i training loop{' (compile)' if compiled else ''}: {ips:8.1f} images/s "
                  f"(accelerate, 2 EMAs, batch {args.batch})")


if __name__ == "__main__":
    main()
