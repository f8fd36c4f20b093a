"""Drawing speed of LayoutLLM-T2I's pipeline shapes: images/s at 512 px, 50 PLMS steps with classifier-free
guidance, through :func:`t2i.latent.gligen.draw` (the path the sample stage takes), random weights.

    .venv/bin/python benchmarks/layoutllm_speed.py [--batch 8] [--steps 50] [--precisions bf16 tf32 fp32]
        [--variants eager compile channels_last+fused_qkv+compile ...]

The drawer has the shapes of the released checkpoint: SD-1.4's U-Net (320/640/1280/1280, 8 heads, context 768)
with GLIGEN's gated self-attention and the relation module in all 16 transformer blocks, CLIP-L's text encoder
(12 layers, 768) and SD's VAE, all three in the precision measured (``sample.dtype``); cuDNN's TF32 stays on as
torch leaves it and the sample stage runs, and ``tf32`` also turns TF32 matmuls on. Each prompt has 6 boxes
(COCO-NSS1K's average: 6.35) and 2 relation triplets. Timed after one warm-up batch, text encoding included,
VAE decoding included.

A variant is a ``+``-joined set of speed settings applied to a fresh drawer (same weights): ``eager`` (none),
``compile`` (``torch.compile`` of the U-Net, as ``sample.compile`` does), ``max_autotune`` (compiled with
``max-autotune-no-cudagraphs``), ``cudagraphs`` (compiled with ``reduce-overhead``: each U-Net call one CUDA
graph replay), ``conv1x1_mm`` (Inductor lowers 1x1 convolutions to matmuls, one of diffusers' recommended
settings; its coordinate-descent tuning compiled for over 9 minutes here), ``channels_last`` (the U-Net's
convolutions in NHWC), ``fused_qkv`` (diffusers' ``fuse_qkv_projections``: one matmul for q, k and v) and
``cudnn_sdpa`` (attention by cuDNN's kernel: PyTorch's flash and memory-efficient kernels switched off).
"""
from __future__ import annotations

import argparse
import time

import torch


def build_drawer(device):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from t2i.latent.gligen import ClipText, GLIGENDrawer
    from t2i.models.gligen import RelationUNet2DConditionModel
    from t2i.text.shapes_clip import build_tokenizer

    torch.manual_seed(0)
    unet = RelationUNet2DConditionModel(
        relation_dim=768, sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768))
    tokenizer = build_tokenizer(["a photo of a dog on a red sofa next to a lamp"], model_max_length=77)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512, scaling_factor=0.18215)
    scheduler = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "skip_prk_steps": True,
                 "steps_offset": 1, "set_alpha_to_one": False}
    drawer = GLIGENDrawer(unet.eval().requires_grad_(False), ClipText(text.eval().requires_grad_(False), tokenizer),
                          scheduler, vae.eval().requires_grad_(False))
    return drawer.to(device)


def layouts(batch: int) -> tuple[list[str], list[list[dict]], list[list[str]]]:
    names = ["dog", "sofa", "lamp", "cup", "table", "window"]
    boxes = [[0.05 + 0.15 * i, 0.1 + 0.1 * (i % 3), 0.3 + 0.12 * i, 0.5 + 0.08 * (i % 3)] for i in range(6)]
    layout = [{"name": n, "box": b} for n, b in zip(names, boxes)]
    return (["a photo of a dog on a red sofa next to a lamp"] * batch, [layout] * batch,
            [["dog on sofa", "lamp next to sofa"]] * batch)


def images_per_second(drawer, batch: int, steps: int, precision: str, device) -> tuple[float, float]:
    from t2i.latent.gligen import draw, unconditional

    # cuDNN's TF32 stays torch's default (on), as in the sample stage: the VAE's fp32 convolutions use it
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    drawer.cast(dtype)  # as the sample stage does
    prompts, lays, rels = layouts(batch)

    def once() -> torch.Tensor:
        cond = drawer.conditions(prompts, lays, rels, device)
        noise = torch.randn(batch, 4, 64, 64, device=device)
        x = draw(drawer, noise, cond, unconditional(drawer, rels, device), steps=steps, cfg=7.5, beta=0.3,
                 scheduler="pndm")
        return drawer.decode(x)

    with torch.no_grad():
        once()
        drawer.text._cache.clear()  # text encoding is part of the timed work
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        images = once()
        torch.cuda.synchronize()
    assert torch.isfinite(images).all()
    return batch / (time.perf_counter() - start), torch.cuda.max_memory_allocated() / 2**30


def prepared_drawer(variant: str, device):
    """A fresh drawer with ``variant``'s speed settings (module docstring)."""
    settings = set(variant.split("+"))
    unknown = settings - {"eager", "compile", "max_autotune", "channels_last", "fused_qkv", "cudnn_sdpa",
                          "cudagraphs", "conv1x1_mm"}
    if unknown:
        raise SystemExit(f"unknown variant settings {sorted(unknown)}")
    drawer = build_drawer(device)
    if "channels_last" in settings:
        drawer.unet.to(memory_format=torch.channels_last)
    if "fused_qkv" in settings:
        drawer.unet.fuse_qkv_projections()
    if "conv1x1_mm" in settings:
        import torch._inductor.config as inductor

        inductor.conv_1x1_as_mm = True
    if "compile" in settings:
        drawer.unet = torch.compile(drawer.unet)
    if "cudagraphs" in settings:
        drawer.unet = torch.compile(drawer.unet, mode="reduce-overhead")
    if "max_autotune" in settings:
        drawer.unet = torch.compile(drawer.unet, mode="max-autotune-no-cudagraphs")
    return drawer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "tf32", "fp32"])
    parser.add_argument("--variants", nargs="+", default=["eager"], help="speed settings to compare (docstring)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("layoutllm_speed.py measures a GPU; no CUDA device here")
    device = torch.device("cuda")
    for variant in args.variants:
        drawer = prepared_drawer(variant, device)
        cudnn = "cudnn_sdpa" in variant.split("+")
        torch.backends.cuda.enable_flash_sdp(not cudnn)
        torch.backends.cuda.enable_mem_efficient_sdp(not cudnn)
        unet_params = sum(p.numel() for p in drawer.unet.parameters()) / 1e6
        relation = sum(p.numel() for n, p in drawer.unet.named_parameters() if ".rela_fuse." in n) / 1e6
        print(f"{torch.cuda.get_device_name()}, {variant}: U-Net {unet_params:.1f} M parameters ({relation:.1f} M in "
              f"rela_fuse), 512 px, {args.steps} PLMS steps, CFG 7.5, scheduled sampling 0.3", flush=True)
        for precision in args.precisions:
            for batch in args.batch:
                ips, peak = images_per_second(drawer, batch, args.steps, precision, device)
                print(f"  {precision:<5} batch {batch:>3}: {ips:6.2f} images/s  (peak {peak:.1f} GiB)", flush=True)
        del drawer
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
