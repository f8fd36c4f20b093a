"""Decomposer training speed of LPD on the real SD3.5-Medium shapes, on one GPU: seconds per optimizer step
and peak memory for the seed's minimal command (configs/lpd_sd35.yaml).

    python benchmarks/lpd_speed.py [--steps 6] [--accumulate 8] [--size 512] [--components 4] [--tokens 128]
                                   [--frozen-dtype bf16|fp32] [--checkpointing]

Everything runs through the workflow's own code: ``t2i.systems.lpd.LPDTask`` in the shared training loop
(``t2i.train.loop.run_training``: accelerate, bf16 autocast, AdamW with fp32 master weights, gradient clipping),
on an :class:`t2i.latent.sd3.SD3Base` built from SD3.5-Medium's configs with random weights (speed does not
depend on them): the MMDiT (24 blocks, 1536 wide, dual attention in blocks 0-12), its 16-channel VAE, CLIP-L,
CLIP-G and T5-XXL's encoder (4096 wide, 24 layers), with word-level tokenizers of the real vocabulary sizes
(token counts, not token ids, set the cost: CLIP 77, T5 ``--token-length`` 512, padded as SD3 pads). The
decomposer is the seed's: 4 components x 128 tokens, 32 heads, 6 layers at width 4096 (1.21 B trainable
parameters). One optimizer step = ``--accumulate`` micro-batches of one 512-px image (the seed's batch 1 x
gradient accumulation 8), each through the text encoders, the decomposer and one batched forward and backward
of the N conditions through the frozen transformer. The first step (allocation, autotuning) is not timed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

# stabilityai/stable-diffusion-3.5-medium: transformer/config.json, vae/config.json, text encoders' configs
SD35M_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
SD35M_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                 down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                 layers_per_block=2, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
                 shift_factor=0.0609, scaling_factor=1.5305, sample_size=1024)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, max_position_embeddings=77, hidden_act="quick_gelu")
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, max_position_embeddings=77, hidden_act="gelu")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
PROMPT = ("A sea turtle glides through clear blue water above a coral reef. Sunlight filters down in shafts from "
          "the surface. A school of small yellow fish swims to the left of the turtle, and a red starfish rests on "
          "a rock below it. ") * 6


def word_tokenizer(vocab_size: int, max_length: int):
    """A word-level tokenizer with ``vocab_size`` entries (pad 0, eos 1, unk 2), padding to ``max_length``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(PROMPT.lower().replace(".", " .").replace(",", " ,").split()))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    vocab.update({f"<extra_{i}>": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def build_base(token_length: int, frozen_dtype: torch.dtype):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from t2i.latent.sd3 import SD3Base
    from t2i.text.sd3_encoders import SD3TextEncoders

    with torch.device("cuda"):
        transformer = SD3Transformer2DModel(**SD35M_TRANSFORMER)
        vae = AutoencoderKL(**SD35M_VAE)
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G))
        t5 = T5EncoderModel(T5Config(**T5_XXL))
    tokenizers = [word_tokenizer(49408, 77), word_tokenizer(49408, 77), word_tokenizer(32128, token_length)]
    encoders = SD3TextEncoders(*(m.eval().requires_grad_(False) for m in (clip_l, clip_g, t5)), tokenizers, 77,
                               token_length)
    base = SD3Base(transformer.eval().requires_grad_(False), encoders, {"shift": 3.0, "num_train_timesteps": 1000},
                   vae.eval().requires_grad_(False))
    return base.cast_frozen(frozen_dtype)  # as LPDSystem.train does under bf16


def main() -> None:
    from t2i.config import experiment_defaults
    from t2i.data.caption_items import CaptionItems
    from t2i.models.lpd import PromptDecomposer
    from t2i.systems.lpd import LPDTask
    from t2i.train.loop import run_training

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--accumulate", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--components", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--token-length", type=int, default=512)
    ap.add_argument("--frozen-dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the frozen transformer")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    t0 = time.time()
    base = build_base(args.token_length, torch.bfloat16 if args.frozen_dtype == "bf16" else torch.float32)
    if args.checkpointing:
        base.transformer.enable_gradient_checkpointing()
    with torch.device("cuda"):
        decomposer = PromptDecomposer(width=4096, num_components=args.components, num_tokens=args.tokens, heads=32,
                                      layers=6)
    build_s = time.time() - t0
    exp = experiment_defaults({"system": "lpd", "dataset": "d", "inputs": {"base": {"asset": "b"}},
                               "decomposer": {"num_components": args.components, "num_tokens": args.tokens},
                               "train": {"batch_size": args.accumulate, "accumulate": args.accumulate,
                                         "validation_every": 0}})
    task = LPDTask(decomposer, base, exp)
    images = torch.rand(4 * args.accumulate, 3, args.size, args.size) * 2 - 1
    data = CaptionItems(images.__getitem__, [PROMPT] * len(images), exp["data"]["caption_drop"], 0)
    task.batch_sampler = data.batch_sampler

    with tempfile.TemporaryDirectory() as tmp:  # each step logged: its row's time stamps the step's end
        run_training(task, data, {"steps": 1 + args.steps, "batch_size": args.accumulate, "seed": 0,
                                  "mixed_precision": "bf16", "compile": False, "save_every": 10 ** 6, "log_every": 1},
                     Path(tmp))
        times = [json.loads(line)["time"] for line in open(Path(tmp) / "model" / "train_log.jsonl")]
    step_s = (times[-1] - times[0]) / args.steps  # the first step (allocation, autotuning) left out
    trainable = sum(p.numel() for p in decomposer.parameters())
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "frozen_dtype": args.frozen_dtype, "checkpointing": args.checkpointing,
        "micro_batches_per_step": args.accumulate, "image_size": args.size, "components": args.components,
        "tokens": args.tokens, "token_length": args.token_length, "decomposer_parameters": trainable,
        "transformer_parameters": sum(p.numel() for p in base.transformer.parameters()),
        "t5_parameters": sum(p.numel() for p in base.encoders.t5.parameters()),
        "seconds_per_step": round(step_s, 3), "seconds_for_2000_steps": round(2000 * step_s),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 1), "build_s": round(build_s, 1)},
        indent=1))


if __name__ == "__main__":
    main()
