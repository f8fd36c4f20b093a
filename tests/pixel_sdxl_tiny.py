"""A tiny pixel-SDXL of SDXL's shape (3 levels, cross-attention from level 1) for tests."""
import torch

from t2i.models.pixel_sdxl import SDXL_UNET_CONFIG, PixelSDXL

CONTEXT, POOLED, TIME_DIM = 16, 8, 4
TINY_UNET = dict(SDXL_UNET_CONFIG, sample_size=8, block_out_channels=(32, 64, 64),
                 transformer_layers_per_block=(1, 1, 1), attention_head_dim=(1, 2, 2), norm_num_groups=8,
                 cross_attention_dim=CONTEXT, addition_time_embed_dim=TIME_DIM,
                 projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM)
# base_resolution: (patch size, encoder channels, decoder channels, U-Net levels removed) for TINY_UNET's 3 levels
CUT = {64: (4, 32, 64, 1), 32: (8, 64, 64, 2)}
SIZE = 32


def tiny(base_resolution: int, seed: int = 0) -> PixelSDXL:
    torch.manual_seed(seed)
    return PixelSDXL(unet_config=TINY_UNET, base_resolution=base_resolution, patch_size=CUT[base_resolution][0],
                     patch_hidden=16, patch_num_res_blocks=1, patch_norm_num_groups=8).eval()


def randomized(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Replace the zero-initialised weights (diffusers zeroes some output projections) so every path is live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if "norm" in name and name.endswith("weight")
                                                                  else 0.0))
    return module
