"""The metric image loader gives torch-fidelity's pixels (PIL ``convert("RGB")``) in its file order."""
import numpy as np
import pytest
import torch
from PIL import Image

from t2i.eval.image_folder import decode_rgb, iter_batches, list_images


def _pil_rgb(path) -> torch.Tensor:
    """torch-fidelity's loader, written out."""
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


@pytest.fixture
def images_of_every_mode(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    paths = {}
    for mode in ("RGB", "RGBA", "L", "LA", "P", "I;16"):
        img = Image.fromarray(rgb).convert(mode) if mode != "I;16" else \
            Image.fromarray(rng.integers(0, 65536, (20, 24), dtype=np.uint16))
        paths[mode] = tmp_path / f"{mode.replace(';', '')}.png"
        img.save(paths[mode])
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 3
    paths["P+tRNS"] = tmp_path / "ptrns.png"
    palette.save(paths["P+tRNS"], transparency=3)
    paths["JPEG"] = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(paths["JPEG"], quality=90)
    return paths


def test_pixels_equal_pillow_for_every_mode(images_of_every_mode):
    for mode, path in images_of_every_mode.items():
        ours = decode_rgb(path)
        assert ours.dtype == torch.uint8 and ours.shape == (3, 20, 24), mode
        assert torch.equal(ours, _pil_rgb(path)), mode


def test_batches_follow_torch_fidelity_order_and_reject_mixed_sizes(tmp_path):
    for name in ("b.png", "a.png", "c.png"):
        Image.new("RGB", (8, 8), (ord(name[0]), 0, 0)).save(tmp_path / name)
    paths = list_images(tmp_path)
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    batches = list(iter_batches(paths, 2, num_workers=2))
    assert [b.shape[0] for b in batches] == [2, 1]
    assert torch.cat(batches)[:, 0, 0, 0].tolist() == [ord("a"), ord("b"), ord("c")]

    Image.new("RGB", (9, 8)).save(tmp_path / "d.png")
    for workers in (1, 2, 4):  # the odd image inside a thread's slice, or a slice of its own
        with pytest.raises(ValueError, match=r"d.png: size 9x8 differs from .*[abc]\.png \(8x8\)"):
            list(iter_batches(list_images(tmp_path), 4, num_workers=workers))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .png"):
        list_images(tmp_path / "empty")
