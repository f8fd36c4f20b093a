"""pixel_sdxl's `init` role: a pixel_sdxl model folder whole, or SDXL's U-Net (diffusers folder, pipeline folder,
single-file checkpoint) into the body, strictly; anything else refused by name."""
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from pixel_sdxl_tiny import TINY_UNET, randomized, tiny
from t2i.checkpoints.pixel_sdxl_original import UNET_PREFIX, ldm_unet_name
from t2i.models.folder import save_model_folder
from t2i.systems.pixel_sdxl import load_initial_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _same(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_a_pixel_sdxl_model_folder_loads_whole(tmp_path):
    source = randomized(tiny(64, seed=0))
    save_model_folder(tmp_path / "model", "pixel_sdxl", {"unet": source}, {})
    target = tiny(64, seed=1)
    assert load_initial_weights(target, tmp_path / "model") == "pixel_sdxl model folder"
    assert _same(target.state_dict(), source.state_dict(), source.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch|Missing key"):
        load_initial_weights(tiny(32), tmp_path / "model")


@pytest.mark.parametrize("layout", ["pipeline", "unet", "single-file"])
def test_sdxl_unet_weights_fill_the_body_and_leave_the_patch_stacks(tmp_path, layout):
    torch.manual_seed(3)
    unet = randomized(UNet2DConditionModel.from_config(TINY_UNET))
    source = tmp_path / "sdxl"
    if layout == "pipeline":
        unet.save_pretrained(source / "unet")
    elif layout == "unet":
        unet.save_pretrained(source)
    else:
        has_attention = {i: getattr(b, "attentions", None) is not None for i, b in enumerate(unet.up_blocks)}
        source.mkdir()
        save_file({UNET_PREFIX + ldm_unet_name(k, TINY_UNET["layers_per_block"], has_attention): v.contiguous()
                   for k, v in unet.state_dict().items()} | {"first_stage_model.decoder.conv_in.weight": torch.ones(1)},
                  str(source / "sd_xl_base_1.0.safetensors"))
    target = tiny(64, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    load_initial_weights(target, source)
    after, theirs = target.state_dict(), unet.state_dict()
    body = [k for k in after if k.startswith("body.")]
    assert body and all(torch.equal(after[k], theirs[k[len("body."):]]) for k in body)
    assert _same(after, before, [k for k in after if not k.startswith("body.")])


def test_anything_else_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"inputs\.init: .*empty is neither a pixel_sdxl model folder"):
        load_initial_weights(tiny(64), tmp_path / "empty")
