"""Full-training speed of pixel-space SDXL's real network on one GPU: images/s, MFU and peak memory.

    python benchmarks/pixel_sdxl_speed.py [--preset paper64] [--size 1024] [--batch 4] [--accumulate 1]
                                          [--steps 10] [--no-checkpointing] [--compile]

The step is the full-training stage's own (``t2i.systems.pixel_sdxl.PixelSDXLTask``'s arithmetic: x0
prediction on ``x_t``, the velocity loss, one AdamW step over the two learning-rate groups, gradient clipping
1.0; with ``--accumulate N`` each optimizer step takes N micro-batches of ``--batch`` images, as the
README's full training does with 4 x 12) on the preset's whole network (SDXL's U-Net body at base resolution 64 between the patch encoder and
decoder: 2.58 B parameters), randomly initialised (speed does not depend on the weights), bf16 autocast with
fp32 master weights. Text conditioning is a random ``[B, 77, 2048]`` context and ``[B, 1280]`` pooled vector:
the frozen text encoders run once per batch outside the U-Net and are not timed, nor is the full stage's
LPIPS term of configs/pixel_sdxl.yaml (VGG16 at half resolution, with input gradients), so a step with it
is slower than these figures.

MFU = model FLOPs per step / step time / the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s). Model FLOPs
are counted with ``torch.utils.flop_counter`` on one forward and backward without checkpointing, so the
recomputation that checkpointing adds is not counted as useful work (the usual MFU convention).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def main() -> None:
    from t2i.diffusion.pixel_sdxl import add_noise, model_timesteps, sample_timesteps, velocity_loss
    from t2i.models.pixel_sdxl import pixel_sdxl_from_preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper64")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--channels-last", action="store_true", help="convolutions in channels_last memory format")
    ap.add_argument("--profile", action="store_true", help="also print the top CUDA kernels of two timed steps")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda")
    torch.manual_seed(0)
    with dev:  # initialised on the GPU: 2.6 B parameters take minutes on a CPU
        model = pixel_sdxl_from_preset(args.preset)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    body = [p for n, p in model.named_parameters() if n.startswith("body.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("body.")]
    opt = torch.optim.AdamW([{"params": rest, "lr": 5e-4}, {"params": body, "lr": 5e-5}], weight_decay=0.01,
                            fused=True)
    B, S = args.batch, args.size
    ctx_dim, pooled_dim = model.context_dim, model.pooled_dim
    x0 = torch.rand(B, 3, S, S, device=dev) * 2 - 1
    if args.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    context = torch.randn(B, 77, ctx_dim, device=dev)
    pooled = torch.randn(B, pooled_dim, device=dev)
    time_ids = torch.tensor([[S, S, 0, 0, S, S]], dtype=torch.float32, device=dev).expand(B, -1)
    net = torch.compile(model) if args.compile else model

    def forward_backward() -> torch.Tensor:
        t = sample_timesteps(B, device=dev)
        x_t = add_noise(x0, torch.randn_like(x0), t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = net(x_t, model_timesteps(t), context, pooled, time_ids)
        loss = velocity_loss(pred, x0, t)
        (loss / args.accumulate).backward()
        return loss

    def train_step() -> torch.Tensor:
        for _ in range(args.accumulate):
            loss = forward_backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    # model FLOPs: one forward + backward without recomputation
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        forward_backward()
    flops = counter.get_total_flops() * args.accumulate  # per optimizer step
    opt.zero_grad(set_to_none=True)

    if not args.no_checkpointing:
        model.enable_gradient_checkpointing()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        train_step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / args.steps
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                train_step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    peak = peak_flops()
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset,
        "parameters": params, "image_size": S, "batch": B, "accumulate": args.accumulate, "checkpointing": not args.no_checkpointing,
        "compile": args.compile, "channels_last": args.channels_last, "step_s": round(step_s, 4), "images_per_s": round(B * args.accumulate / step_s, 3),
        "model_tflop_per_step": round(flops / 1e12, 2), "achieved_tflops": round(flops / step_s / 1e12, 1),
        "mfu": round(flops / step_s / peak, 4) if peak else None, "peak_bf16_tflops": peak / 1e12 if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2), "last_loss": loss.item(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
