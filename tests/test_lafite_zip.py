"""LAFITE's dataset zip: writing it from a caption-dir folder and reading it (ours and the original's layout)."""
import io
import json
import random
import types
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.lafite_zip import (ClipEncoder, HFClipEncoder, LafiteZipDataset, archive_name, caption_dir_items,
                                 feature_crop_box, feature_pixels, write_dataset_zip)

SIZE = 16
LONG = "a small red circle. a big blue square, a green one"  # 10 words: too long for FakeClip


class FakeClip:
    """A deterministic stand-in encoder: 6-d features; texts of more than 6 words do not fit."""

    input_size = 8

    def image_features(self, pixels):
        p = pixels
        return torch.stack([p.mean((1, 2, 3)), p[:, 0].mean((1, 2)), p[:, 1].mean((1, 2)), p[:, 2].mean((1, 2)),
                            p[:, :, :4].mean((1, 2, 3)), p[:, :, :, :4].mean((1, 2, 3))], 1)

    def text_features(self, texts):
        return torch.tensor([[random.Random(t).gauss(0, 1) for _ in range(6)] for t in texts], dtype=torch.float32)

    def fits(self, text):
        return len(text.split()) <= 6


def centre_crop_lanczos(path, size=SIZE):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(img.crop(box).resize((size, size), Image.LANCZOS))


@pytest.fixture
def caption_dir(tmp_path):
    """RGB, grayscale, palette and RGBA images with captions, plus a corrupt PNG and a text file named .png."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "captions").mkdir()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    rgb.save(root / "images/a.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L").save(root / "images/b.png")
    rgb.resize((20, 36)).quantize(16).save(root / "images/c.png")
    Image.fromarray(rng.integers(0, 256, (17, 17, 4), dtype=np.uint8), "RGBA").save(root / "images/d.png")
    buf = io.BytesIO()
    rgb.save(buf, format="png")
    (root / "images/e.png").write_bytes(buf.getvalue()[:200])  # truncated
    (root / "images/f.png").write_text("this is a caption, not an image\n")
    captions = {"a": "a red circle\n\n  \nbig blue square\n", "b": LONG + "\n", "c": "", "d": "one green square",
                "e": "lost", "f": "lost"}
    for name, text in captions.items():
        (root / "captions" / f"{name}.txt").write_text(text)
    return root


def test_round_trip(caption_dir, tmp_path, caplog):
    clip = FakeClip()
    out = tmp_path / "prepared/dataset.zip"
    with caplog.at_level("WARNING", logger="t2i.data.lafite_zip"):
        summary = write_dataset_zip(out, caption_dir_items(caption_dir), image_size=SIZE, clip=clip, batch_size=3,
                                    seed=5)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [str(caption_dir / "images" / n)
                                                                       for n in ("e.png", "f.png")]
    cosine = summary.pop("matched_cosine")  # checked against the zip's features in test_lafite_system
    assert summary == {"images": 4, "skipped": 2, "skipped_names": ["e", "f"], "captions": 4, "long_captions": 1,
                       "without_captions": 1, "image_size": SIZE, "feature_dim": 6}
    assert -1 <= cosine <= 1
    assert [p.name for p in out.parent.iterdir()] == ["dataset.zip"]  # no temporary file left

    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == [archive_name(i) for i in range(4)] + ["dataset.json"]
        assert zf.namelist()[0] == "00000/img00000000.png"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert all(i.file_size > SIZE * SIZE * 3 for i in zf.infolist()[:4])  # PNG compress_level 0
        meta = json.loads(zf.read("dataset.json"))
    assert meta["labels"] is None
    assert [f for f, _ in meta["clip_img_features"]] == [f for f, _ in meta["clip_txt_features"]] == zf.namelist()[:4]

    ds = LafiteZipDataset(out)
    assert ds.names == ["a", "b", "c", "d"] and len(ds) == 4
    assert ds.image_size == SIZE and ds.feature_dim == 6
    for i, name in enumerate(ds.names):
        item = ds[i]
        expected = centre_crop_lanczos(caption_dir / "images" / f"{name}.png")
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, SIZE, SIZE)
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), expected)
        pixels = feature_pixels(expected, feature_crop_box(name, SIZE, 5), clip.input_size)[None]
        assert torch.equal(item["img_feature"], clip.image_features(pixels)[0])
    assert np.array_equal(ds.caption_features(0), clip.text_features(["a red circle", "big blue square"]).numpy())
    pieces = ["a small red circle", " a big blue square", " a green one"]
    np.testing.assert_allclose(ds.caption_features(1), clip.text_features(pieces).mean(0, keepdim=True).numpy(),
                               rtol=0, atol=1e-6)
    assert ds.caption_features(2).shape == (0, 6) and ds.num_captions(2) == 0
    assert np.array_equal(ds.caption_features(3), clip.text_features(["one green square"]).numpy())

    again = tmp_path / "again.zip"
    write_dataset_zip(again, caption_dir_items(caption_dir), image_size=SIZE, clip=clip, batch_size=2, seed=5)
    assert again.read_bytes() == out.read_bytes()  # reproducible, whatever the batch size


def test_feature_crop_follows_the_original_range():
    boxes = {feature_crop_box(f"img{i}", 256, 0) for i in range(200)}
    assert {side for _, _, side in boxes} == {253, 254, 255}  # randint(int(.99*256), 256)
    assert all(0 <= top < 256 - side and 0 <= left < 256 - side for top, left, side in boxes)
    assert feature_crop_box("x", 256, 0) == feature_crop_box("x", 256, 0)
    assert [feature_crop_box(f"img{i}", 256, 0) for i in range(20)] != [feature_crop_box(f"img{i}", 256, 1)
                                                                        for i in range(20)]  # the seed matters
    assert feature_crop_box("x", 16, 3) == (0, 0, 15)  # below 100 px the side is always S - 1


def test_bad_arguments(caption_dir, tmp_path):
    with pytest.raises(ValueError, match="power of two"):
        write_dataset_zip(tmp_path / "x.zip", caption_dir_items(caption_dir), image_size=24, clip=FakeClip())
    with pytest.raises(ValueError, match="no readable images"):
        write_dataset_zip(tmp_path / "x.zip", caption_dir_items(caption_dir, ["e", "f"]), image_size=SIZE,
                          clip=FakeClip())
    assert not (tmp_path / "x.zip").exists()
    with pytest.raises(FileNotFoundError, match="'zz'"):
        list(caption_dir_items(caption_dir, ["a", "zz"]))


@pytest.fixture
def original_zip(tmp_path):
    """A zip exactly as the original dataset_tool.py writes it (index 1 failed, so it is missing; 512-d features)."""
    rng = np.random.default_rng(1)
    images = {0: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 2: rng.integers(0, 256, (8, 8), dtype=np.uint8),
              3: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)}
    img_feats = {i: rng.normal(size=512).astype(np.float32) for i in images}
    txt_feats = {0: rng.normal(size=(2, 512)).astype(np.float32), 2: np.zeros((0, 512), np.float32),
                 3: rng.normal(size=(1, 512)).astype(np.float32)}
    path = tmp_path / "COCO2014_train_CLIP_ViTB32.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for idx, img in images.items():
            bits = io.BytesIO()
            mode = {2: "L", 3: "RGB"}[img.ndim]
            Image.fromarray(img, mode).save(bits, format="png", compress_level=0, optimize=False)
            zf.writestr(f"{idx:08d}"[:5] + f"/img{idx:08d}.png", bits.getbuffer())
        fname = lambda i: f"{i:08d}"[:5] + f"/img{i:08d}.png"  # noqa: E731
        metadata = {"labels": None,
                    "clip_img_features": [[fname(i), img_feats[i].tolist()] for i in images],
                    "clip_txt_features": [[fname(i), txt_feats[i].tolist()] for i in images]}
        zf.writestr("dataset.json", json.dumps(metadata))
    return types.SimpleNamespace(path=path, images=images, img=img_feats, txt=txt_feats,
                                 fnames=[fname(i) for i in images])


def test_reads_the_original_layout(original_zip):
    ds = LafiteZipDataset(original_zip.path)
    assert ds.fnames == ds.names == original_zip.fnames == ["00000/img00000000.png", "00000/img00000002.png",
                                                             "00000/img00000003.png"]
    assert ds.feature_dim == 512 and ds.image_size == 8
    for i, idx in enumerate(original_zip.images):
        img = original_zip.images[idx]
        rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img  # grayscale comes back as RGB
        assert np.array_equal(ds[i]["image"].permute(1, 2, 0).numpy(), rgb)
        assert np.array_equal(ds[(i, True)]["image"].numpy(), ds[i]["image"].numpy()[:, :, ::-1])
        assert np.array_equal(ds[i]["img_feature"].numpy(), original_zip.img[idx])
        assert np.array_equal(ds.caption_features(i), original_zip.txt[idx])
    assert np.array_equal(ds[(0, True)]["img_feature"].numpy(), original_zip.img[0])  # unflipped features


def test_missing_captions_fail_only_when_text_is_asked_for(original_zip):
    ds = LafiteZipDataset(original_zip.path)
    assert set(ds[(1, True)]) == {"image", "img_feature", "index"}  # language-free: image features only
    with pytest.raises(ValueError, match="img00000002.png.*no caption"):
        ds[(1, False, 7)]
    with pytest.raises(ValueError, match="1 image\\(s\\) have no caption.*img00000002"):
        LafiteZipDataset(original_zip.path, require_captions=True)


def test_caption_pick_is_keyed(original_zip):
    ds = LafiteZipDataset(original_zip.path)
    picks = [ds.caption_feature(0, key) for key in range(40)]
    assert all(np.array_equal(p, ds.caption_feature(0, k)) for k, p in reversed(list(enumerate(picks))))
    chosen = {int(np.flatnonzero((original_zip.txt[0] == p).all(1))[0]) for p in picks}
    assert chosen == {0, 1}
    assert np.array_equal(ds[(0, False, 11)]["txt_feature"].numpy(), ds.caption_feature(0, 11))
    assert np.array_equal(ds.caption_feature(2, 5), original_zip.txt[3][0])


def test_dataloader_workers_open_their_own_zip(original_zip):
    ds = LafiteZipDataset(original_zip.path)
    items = [(0, False, 1), (2, True, 2), (0, True, 3), (2, False, 4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=items, num_workers=2)
    batches = list(loader)
    for b, start in zip(batches, (0, 2)):
        for j in range(2):
            direct = ds[items[start + j]]
            assert all(torch.equal(b[k][j], torch.as_tensor(v)) for k, v in direct.items())


@pytest.fixture(scope="module")
def tiny_clip():
    """A random transformers CLIPModel with a word-level tokenizer (8-token context) and an image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "a", "red", "circle", "blue", "square", "small", "big", "green", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(words), max_position_embeddings=8, bos_token_id=vocab["<bos>"],
                                         eos_token_id=vocab["<eos>"], pad_token_id=0, **tiny),
                        vision_config=dict(image_size=16, patch_size=8, **tiny), projection_dim=12)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return model, types.SimpleNamespace(image_processor=image_processor, tokenizer=tokenizer)


def test_features_are_what_a_transformers_clip_computes(tiny_clip, tmp_path):
    model, processor = tiny_clip
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "captions").mkdir()
    rng = np.random.default_rng(2)
    for name, caption in [("x", "a red circle\nbig blue square"), ("y", "a small red circle, big blue square")]:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"images/{name}.png")
        (root / f"captions/{name}.txt").write_text(caption)
    out = tmp_path / "dataset.zip"
    summary = write_dataset_zip(out, caption_dir_items(root), image_size=32, clip=(model, processor), device="cpu")
    assert summary["long_captions"] == 1 and summary["feature_dim"] == 12  # 7 words + bos/eos > 8 tokens
    ds = LafiteZipDataset(out)
    mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)

    def pooled(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def text(line):
        return pooled(model.get_text_features(**processor.tokenizer([line], return_tensors="pt")))[0]

    with torch.no_grad():
        for i, name in enumerate(ds.names):
            image = ds[i]["image"].permute(1, 2, 0).numpy()
            assert np.array_equal(image, centre_crop_lanczos(root / f"images/{name}.png", 32))
            pixels = feature_pixels(image, feature_crop_box(name, 32, 0), 16)[None]
            expected = pooled(model.get_image_features(pixel_values=(pixels - mean) / std))[0]
            torch.testing.assert_close(ds[i]["img_feature"], expected, atol=1e-5, rtol=1e-5)
        expected_x = torch.stack([text("a red circle"), text("big blue square")])
        expected_y = torch.stack([text("a small red circle"), text(" big blue square")]).mean(0, keepdim=True)
    torch.testing.assert_close(torch.from_numpy(ds.caption_features(0)), expected_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(ds.caption_features(1)), expected_y, atol=1e-5, rtol=1e-5)
    assert isinstance(HFClipEncoder(model, processor), ClipEncoder)
