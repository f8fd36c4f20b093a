"""The Shapes CLIP (recipe ``clip``): tokenizer, folder loading, EOS pooling, training, CLIP score, asset."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from t2i.checkpoints.hashing import verify_sha256sums, write_sha256sums
from t2i.text import shapes_clip
from t2i.train.state import StepKeyedBatchSampler
from t2i.utils.atomic import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = {"steps": 30, "batch_size": 32, "lr": 3e-3, "seed": 0, "width": 32, "layers": 2, "patch_size": 8,
        "projection_dim": 32, "captions": "mixed"}
FOLDER_FILES = ["SHA256SUMS", "config.json", "merges.txt", "metrics.json", "model.safetensors",
                "preprocessor_config.json", "processor_config.json", "provenance.json", "tokenizer.json",
                "tokenizer_config.json", "vocab.json"]


@pytest.fixture(scope="module")
def trained(shapes32, tmp_path_factory):
    """A tiny Shapes CLIP trained on the session's Shapes dataset: (folder, metrics)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("shapes_clip")
        metrics = shapes_clip.train_shapes_clip(shapes32, out, TINY)
    finally:
        torch.set_num_threads(threads)
    return out, metrics


def _texts(dataset) -> list[str]:
    return [t for r in read_jsonl(dataset / "annotations.jsonl") for v in shapes_clip.texts_of(r).values() for t in v]


def test_tokenizer_is_word_level_and_deterministic(shapes32):
    texts = _texts(shapes32)
    tok = shapes_clip.build_tokenizer(texts)
    shuffled = texts[::-1]
    random.Random(0).shuffle(shuffled)
    again = shapes_clip.build_tokenizer(shuffled)
    assert tok.get_vocab() == again.get_vocab()
    assert tok.backend_tokenizer.to_str() == again.backend_tokenizer.to_str()
    vocab = tok.get_vocab()
    assert tok.eos_token_id == len(vocab) - 1 == max(vocab.values()) and tok.bos_token_id == len(vocab) - 2
    words = {w + "</w>" for w in shapes_clip._words(texts, tok)}
    for text in texts:
        ids = tok(text)["input_ids"]
        # BOS, one token per word (never unknown: unk is EOS), EOS
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) == len(text.replace(".", " .").replace(",", " ,").split()) + 2
        assert set(tok.convert_ids_to_tokens(ids[1:-1])) <= words
    caption = read_jsonl(shapes32 / "annotations.jsonl")[0]["caption"]
    assert tok.decode(tok(caption)["input_ids"], skip_special_tokens=True) == caption


def test_caption_choice_is_keyed_by_step_and_annotated_texts_are_positives():
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 3, 4, 4)
    # image i: kind j has texts [i, 100 + j, n], three tags and one text of each other kind (long captions one
    # token longer); all images share the tag [0, 101, 0]
    ids = [{k: [[i, 100 + j, n] + [7] * (k == "long_caption") for n in range(3 if k == "tag" else 1)]
            for j, k in enumerate(shapes_clip.TEXT_KINDS)} for i in range(8)]
    for d in ids:
        d["tag"][0] = [0, 101, 0]
    data = shapes_clip._Pairs(images, ids, "mixed", seed=0, pad_id=99)
    assert [data[(i, 5)] for i in range(8)] == [data[(i, 5)] for i in range(8)]
    kinds = [[texts[0][1] - 100 for _, texts, _ in (data[(i, s)] for i in range(8))] for s in range(60)]
    # mixed: every kind is drawn; a long-caption step gives every image its long caption (short padding elsewhere)
    assert {k for step in kinds for k in step} == {0, 1, 2, 3}
    assert all((3 in step) == (set(step) == {3}) for step in kinds)
    one = shapes_clip._Pairs(images, ids, "tag", seed=0, pad_id=99)
    assert {one[(2, s)][1][0][2] for s in range(20)} == {0, 1, 2} and one[(2, 7)][1][0][:2] in ([2, 101], [0, 101])
    t = data.text_ids
    batch = data.collate([(3, [[3, 100, 0]], [t[3]["caption"][0]]), (5, [[0, 101, 0]], [t[5]["tag"][0]]),
                          (6, [[6, 100, 0], [6, 103, 0, 7]], [t[6]["caption"][0], t[6]["long_caption"][0]])])
    assert batch["images"][:, 0, 0, 0].tolist() == [3, 5, 6]
    assert batch["input_ids"].tolist() == [[3, 100, 0, 99], [0, 101, 0, 99], [6, 100, 0, 99], [6, 103, 0, 7]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 3, 3, 4]
    # [text, image]: a text is positive for its own image and for any image annotated with it (the shared tag)
    assert batch["positives"].tolist() == [[True, False, False], [True, True, True], [False, False, True],
                                           [False, False, True]]

    args = {"dataset_size": 8, "global_batch": 4, "rank": 0, "world": 1, "seed": 0, "stop": 6}
    full = list(StepKeyedBatchSampler(start=0, **args))
    assert list(StepKeyedBatchSampler(start=4, **args)) == full[4:]
    assert [{s for _, s in b} for b in full] == [{s} for s in range(6)]


def test_folder_loads_offline_through_the_transformers_classes(trained, shapes32):
    from transformers import (AutoTokenizer, CLIPModel, CLIPProcessor, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionModelWithProjection)

    folder, _ = trained
    assert sorted(p.name for p in folder.iterdir()) == FOLDER_FILES
    assert verify_sha256sums(folder) == len(FOLDER_FILES) - 2
    prompts = ["a red circle", "a small green triangle to the left of two blue squares"]
    auto = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(auto).__name__ in ("CLIPTokenizer", "CLIPTokenizerFast")
    clip_tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    image = shapes32 / "images" / "test_00000.png"
    from PIL import Image
    from t2i.eval.image_folder import decode_rgb

    inputs = processor(text=prompts, images=[Image.open(image)], return_tensors="pt", padding=True)
    assert inputs["input_ids"].tolist() == auto(prompts, padding=True)["input_ids"]
    assert inputs["input_ids"].tolist() == clip_tok(prompts, padding=True)["input_ids"]
    assert inputs["attention_mask"][0].tolist() == [1] * 5 + [0] * (inputs["input_ids"].shape[1] - 5)
    # the dataset's images pass through unresized: pixel_values are the normalised pixels
    torch.testing.assert_close(inputs["pixel_values"], shapes_clip.normalize(decode_rgb(image)[None]),
                               atol=1e-5, rtol=0)

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    text, info = CLIPTextModelWithProjection.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]  # text_config carries the projection size
    text.eval()
    vision = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        out = model(**inputs)
        text_embeds = text(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).text_embeds
        image_embeds = vision(pixel_values=inputs["pixel_values"]).image_embeds
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(unit(text_embeds, dim=-1), out.text_embeds)
    torch.testing.assert_close(unit(image_embeds, dim=-1), out.image_embeds)


def test_pooled_output_is_the_eos_state(trained):
    from transformers import AutoTokenizer, CLIPTextModel

    folder, _ = trained
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = CLIPTextModel.from_pretrained(folder, local_files_only=True).eval()
    config = model.config
    assert (config.bos_token_id, config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert config.vocab_size == len(tok)
    assert config.eos_token_id != 2  # not the legacy argmax pooling (which would agree anyway: EOS is the largest id)
    enc = tok(["two red squares", "a large cyan circle above a small yellow triangle"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    eos = enc["attention_mask"].sum(1) - 1
    assert (enc["input_ids"][torch.arange(2), eos] == tok.eos_token_id).all()
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[torch.arange(2), eos])
    assert len(out.hidden_states) == config.num_hidden_layers + 1  # pixel_sdxl reads hidden_states[-2]


def test_training_lowers_the_loss_and_reports_zero_shot_accuracy(trained):
    folder, metrics = trained
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert metrics["final_loss"] < metrics["loss_first"]
    assert metrics["steps"] == TINY["steps"]
    for split in ("test", "holdout"):
        m = metrics[split]
        assert {"top1", "top1_single", "t2i_top1", "num_images", "num_single"} <= set(m)
        assert all(0 <= m[k] <= 1 for k in ("top1", "top1_single", "t2i_top1"))


def test_clip_score_runs_with_the_shapes_clip(trained, shapes32, tmp_path):
    from t2i.eval.clip_score import clip_score_folder

    folder, _ = trained
    rows = read_jsonl(shapes32 / "annotations.jsonl")[:3]
    for i, row in enumerate(rows):
        shutil.copy(shapes32 / "images" / f"{row['name']}.png", tmp_path / f"{i:06d}.png")
    index = [{"id": i, "prompt": r["long_caption"], "seed": 0, "file": f"{i:06d}.png"} for i, r in enumerate(rows)]
    (tmp_path / "index.jsonl").write_text("".join(json.dumps(row) + "\n" for row in index))
    result = clip_score_folder(tmp_path, folder, device="cpu", batch_size=2)
    assert result["num_images"] == 3 and 0 <= result["clip_score"] <= 100


def _config(dataset: str, asset: dict) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["datasets"][dataset] = {"kind": "shapes"}
    cfg["pretrained"]["shapes-clip"] = asset
    return cfg


def test_schema_keys_are_per_recipe():
    from t2i.config import ConfigError, validate_config

    filled = validate_config(_config("tiny", {"source": "trained", "recipe": "clip", "dataset": "tiny"}))
    assert {k: v for k, v in filled["pretrained"]["shapes-clip"].items()
            if k not in ("source", "recipe", "dataset")} == shapes_clip.DEFAULTS
    with pytest.raises(ConfigError, match=r"pretrained\.shapes-clip: unknown key\(s\) 'widht'"):
        validate_config(_config("tiny", {"source": "trained", "recipe": "clip", "dataset": "tiny", "widht": 64}))
    with pytest.raises(ConfigError, match=r"pretrained\.shapes-clip: unknown key\(s\) 'width'"):
        validate_config(_config("tiny", {"source": "trained", "recipe": "shapes-cnn", "dataset": "tiny", "width": 64}))
    with pytest.raises(ConfigError, match=r"pretrained\.shapes-clip\.captions"):
        validate_config(_config("tiny", {"source": "trained", "recipe": "clip", "dataset": "tiny", "captions": "all"}))
    cnn = validate_config(_config("tiny", {"source": "trained", "recipe": "shapes-cnn", "dataset": "tiny"}))
    assert cnn["pretrained"]["shapes-clip"]["steps"] == 600


def test_recipe_through_assemble_asset(shapes32, tmp_path, monkeypatch):
    from transformers import CLIPModel

    from t2i.checkpoints.assemble import assemble_asset
    from t2i.config import validate_config

    dataset = tmp_path / "results" / "datasets" / "tiny"
    shutil.copytree(shapes32, dataset)
    write_sha256sums(dataset)
    monkeypatch.chdir(tmp_path)
    asset = {"source": "trained", "recipe": "clip", "dataset": "tiny", **TINY, "steps": 2, "batch_size": 16}
    cfg = validate_config(_config("tiny", asset))["pretrained"]["shapes-clip"]
    out = assemble_asset("shapes-clip", cfg, tmp_path / "results" / "pretrained" / "shapes-clip")
    assert sorted(p.name for p in out.iterdir()) == FOLDER_FILES
    verify_sha256sums(out)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["source"]["recipe"] == "clip" and "test" in provenance["source"]["metrics"]
    assert CLIPModel.from_pretrained(out, local_files_only=True).config.vision_config.patch_size == 8
