"""The original's checkpoint layout (t2i.checkpoints.pixel_sdxl_original): names checked against diffusers'
own SGM converter, the cut's kept blocks as the research note lists them, and checkpoints written in the
original's structure loading into our model (and ours written in it)."""
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from t2i.checkpoints import pixel_sdxl_original as orig
from t2i.checkpoints.safe_load import UnsafeCheckpointError
from t2i.models.pixel_sdxl import SDXL_UNET_CONFIG
from pixel_sdxl_tiny import CONTEXT, POOLED, TIME_DIM, TINY_UNET, randomized, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("config", [TINY_UNET, SDXL_UNET_CONFIG], ids=["tiny", "sdxl"])
def test_sgm_names_are_the_inverse_of_diffusers_converter(config):
    """Every tensor of a whole U-Net renamed by our rule, then converted back by diffusers'
    convert_ldm_unet_checkpoint, lands on its own name (SDXL's full shapes on the meta device)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    has_attention = {i: getattr(b, "attentions", None) is not None for i, b in enumerate(unet.up_blocks)}
    state = unet.state_dict()
    sgm = {orig.UNET_PREFIX + orig.ldm_unet_name(k, config["layers_per_block"], has_attention): v for k, v in state.items()}
    assert len(sgm) == len(state)
    back = convert_ldm_unet_checkpoint(sgm, dict(unet.config))
    assert set(back) == set(state)
    assert all(back[k] is state[k] for k in state)


def test_the_cut_keeps_the_blocks_the_original_keeps():
    """base 64: input_blocks 4-8, middle_block, output_blocks 0-5 without the upsampler in 5; base 32:
    input_blocks 7-8, output_blocks 0-2 without the upsampler in 2 (research note, sdxl_unet_base.py:520-677)."""
    for base, inputs, outputs in ((64, range(4, 9), range(0, 6)), (32, range(7, 9), range(0, 3))):
        names = set(orig.original_names(tiny(base)).values())
        blocks = {tuple(k[len(orig.UNET_PREFIX):].split(".")[:2]) for k in names}
        assert {int(i) for kind, i in blocks if kind == "input_blocks"} == set(inputs)
        assert {int(i) for kind, i in blocks if kind == "output_blocks"} == set(outputs)
        assert not any(k.startswith(orig.UNET_PREFIX + f"output_blocks.{outputs[-1]}.2.conv") for k in names)
        assert {k for k in names if "patch_encoder" in k} >= {orig.UNET_PREFIX + "patch_encoder.net.0.weight",
                                                             orig.UNET_PREFIX + "patch_encoder.net.3.conv1.weight",
                                                             orig.UNET_PREFIX + "patch_encoder.net.4.weight"}


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, 32, 32, generator=g), torch.tensor([100.0, 900.0]),
            torch.randn(2, 5, CONTEXT, generator=g), torch.randn(2, POOLED, generator=g),
            torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2))


def test_a_checkpoint_in_the_original_structure_loads_with_weights_only(tmp_path):
    """{"model": SDXL layout + text encoders, "optimizer_state": ...} in a .pth, as train.py saves it."""
    source = randomized(tiny(64, seed=0))
    text = {orig.TEXT_PREFIX + "0.transformer.text_model.embeddings.token_embedding.weight": torch.randn(10, 4),
            orig.TEXT_PREFIX + "1.model.logit_scale": torch.tensor(4.6)}
    path = tmp_path / "pixel_sdxl_step1000.pth"
    optimizer = torch.optim.AdamW(source.parameters())
    torch.save({"model": {**orig.to_original(source), **text}, "optimizer_state": optimizer.state_dict()}, path)
    state, optimizer_state, ours = orig.read_original(path)
    assert optimizer_state["param_groups"][0]["lr"] == 1e-3 and ours is None
    target = tiny(64, seed=1)
    assert set(orig.load_original(target, state)) == set(text)
    with torch.no_grad():
        torch.testing.assert_close(target(*_inputs()), source(*_inputs()), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_our_weights_written_in_the_original_layout_read_back(tmp_path, suffix):
    source = randomized(tiny(32, seed=2))
    path = tmp_path / f"ema{suffix}"
    orig.write_original(path, source)
    state, _, ours = orig.read_original(path)
    assert ours["config"]["base_resolution"] == 32
    target = tiny(32, seed=3)
    assert orig.load_original(target, state) == {}
    with torch.no_grad():
        torch.testing.assert_close(target(*_inputs(1)), source(*_inputs(1)), rtol=0, atol=0)


def test_another_architecture_is_refused_by_name(tmp_path):
    """A checkpoint of the other cut: one error naming what is missing, foreign or of another shape."""
    with pytest.raises(ValueError, match=r"base_resolution 64.*missing \(\d+\): model\.diffusion_model\.input_blocks"
                                         r"\.4\..*shape differs"):
        orig.load_original(tiny(64), orig.to_original(tiny(32)))
    with pytest.raises(ValueError, match=r"base_resolution 32.*unexpected \(\d+\): model\.diffusion_model\."):
        orig.load_original(tiny(32), orig.to_original(tiny(64)))
    bad = dict(orig.to_original(tiny(64)))
    bad["model.diffusion_model.patch_encoder.net.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="shape differs"):
        orig.load_original(tiny(64), bad)


class _TouchesWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_none(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    torch.save({"model": orig.to_original(tiny(64)), "optimizer_state": _TouchesWhenUnpickled(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        orig.read_original(path)
    assert not marker.exists()


@pytest.mark.parametrize("preset", ["paper64", "paper32"])
def test_an_original_checkpoint_gives_its_architecture_by_its_tensors(preset):
    """The original records no architecture: SDXL's U-Net, the cut and the patch encoder/decoder are read
    off the tensor names and shapes (the real sizes, on the meta device)."""
    from t2i.models.pixel_sdxl import PIXEL_SDXL_PRESETS, PixelSDXL

    with torch.device("meta"):
        model = PixelSDXL(**PIXEL_SDXL_PRESETS[preset])
    config = orig.infer_config(orig.to_original(model))
    assert config == {**PIXEL_SDXL_PRESETS[preset], "unet_config": dict(SDXL_UNET_CONFIG)}


def test_convert_asset_makes_a_model_folder_and_refuses_what_does_not_fit(tmp_path):
    """`convert: pixel-sdxl-checkpoint` on a local file: a checkpoint t2i wrote carries its own architecture
    and meta, and becomes a model folder that predicts what the source predicts; an original-format file
    of a tiny network is read as SDXL (what the original builds) and refused in one line naming the asset."""
    from t2i.checkpoints.assemble import AssetError, assemble_asset
    from t2i.models.folder import load_component, read_index

    source = randomized(tiny(64, seed=4))
    path = tmp_path / "ema.safetensors"
    orig.write_original(path, source, meta={"image_size": [32, 32], "noise_scale": 1.0, "text_max_length": 8})
    out = assemble_asset("pixel-orig", {"source": "local", "path": str(path), "convert": "pixel-sdxl-checkpoint"},
                         tmp_path / "asset")
    assert not (out / path.name).exists() and (out / "SHA256SUMS").is_file()
    assert read_index(out)["meta"]["image_size"] == [32, 32]
    unet = load_component(out, "unet", system="pixel_sdxl").eval()
    with torch.no_grad():
        torch.testing.assert_close(unet(*_inputs(2)), source(*_inputs(2)), rtol=0, atol=0)

    bare = tmp_path / "pixel_sdxl_step10.pth"
    torch.save({"model": orig.to_original(source), "optimizer_state": {}}, bare)
    with pytest.raises(AssetError, match=r"pretrained\.pixel-orig\.convert: pixel_sdxl_step10\.pth: the architecture "
                                         r"inferred from the tensors \(base_resolution 64, patch 4, width 16, 1 "
                                         r"residual blocks\) is not an SDXL pixel U-Net"):
        assemble_asset("pixel-orig", {"source": "local", "path": str(bare), "convert": "pixel-sdxl-checkpoint"},
                       tmp_path / "bad-asset")


def test_cli_exports_a_model_folder_in_the_original_layout(tmp_path, capsys):
    """`t2i export-original MODEL_DIR OUT`: what a trained pixel_sdxl folder holds, readable the original's way."""
    from t2i.cli import main
    from t2i.models.folder import save_model_folder

    source = randomized(tiny(32, seed=5))
    save_model_folder(tmp_path / "model", "pixel_sdxl", {"unet": source}, {"image_size": [32, 32]})
    assert main(["export-original", str(tmp_path / "model"), str(tmp_path / "out.pt")]) == 0
    assert "original's layout" in capsys.readouterr().out
    content = torch.load(tmp_path / "out.pt", weights_only=True)
    assert content["t2i"]["meta"] == {"image_size": [32, 32]}
    target = tiny(32, seed=6)
    orig.load_original(target, content["model"])
    with torch.no_grad():
        torch.testing.assert_close(target(*_inputs(3)), source(*_inputs(3)), rtol=0, atol=0)
