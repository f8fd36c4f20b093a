"""The contracts between stages: verified inputs, checkpoint folders, and the sampling harness."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.checkpoints.hashing import ChecksumError, write_sha256sums
from t2i.jobs import verified_inputs
from t2i.models.folder import INDEX, ModelFolderError, load_component, read_index, save_model_folder
from t2i.models.jit import jit_from_preset
from t2i.systems.sampling import Generated, row_noise, run_sampling


def test_an_input_that_changed_after_its_manifest_is_refused(tmp_path):
    folder = tmp_path / "asset"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"original")
    write_sha256sums(folder)
    assert verified_inputs({"clip": str(folder)}) == {"clip": folder}
    (folder / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="weights.bin: expected"):
        verified_inputs({"clip": str(folder)})


def test_dataset_marker_maps_to_its_folder(tmp_path):
    (tmp_path / "images").mkdir()
    write_sha256sums(tmp_path)
    assert verified_inputs({"dataset": str(tmp_path / "SHA256SUMS")}) == {"dataset": tmp_path}


def test_checkpoint_folder_round_trip_and_refusals(tmp_path):
    net = jit_from_preset("JiT-T/8-Text", input_size=32, text_dim=8)
    save_model_folder(tmp_path, "jit", {"network": net}, {"image_size": 32})
    assert read_index(tmp_path)["meta"] == {"image_size": 32}
    loaded = load_component(tmp_path, "network", system="jit")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ModelFolderError, match="trained by system 'jit', not 'lafite'"):
        load_component(tmp_path, "network", system="lafite")
    with pytest.raises(ModelFolderError, match="no component 'generator'"):
        load_component(tmp_path, "generator")
    index = json.loads((tmp_path / INDEX).read_text())
    index["components"]["network"] = "os:system"
    (tmp_path / INDEX).write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="outside"):
        load_component(tmp_path, "network")
    with pytest.raises(ModelFolderError, match="not a t2i model folder"):
        read_index(tmp_path / "network")


def _sample(tmp_path, name, gen_bsz):
    """A fake system: each image is its row's noise; an extra picture is its negative."""
    exp = {"sample": {"seed": 5, "num_images": 5, "gen_bsz": gen_bsz}}
    prompts = [{"id": "a", "prompt": "a red circle"}, {"id": "b", "prompt": "two blue squares"}]

    def generate_batch(rows):
        noise = row_noise(rows, (3, 4, 4), "cpu").clamp(-1, 1)
        return Generated(noise, extras={"negative": -noise}, info=[{"len": len(r["prompt"])} for r in rows])

    out = tmp_path / name
    out.mkdir(exist_ok=True)
    return out, run_sampling(exp, prompts, out, generate_batch)


def test_sampling_harness_rows_seeds_extras_and_batch_size_independence(tmp_path):
    out, rows = _sample(tmp_path, "a", gen_bsz=2)
    assert [(r["id"], r["seed"], r["file"]) for r in rows] == [
        ("a", 5, "000000.png"), ("b", 6, "000001.png"), ("a", 7, "000002.png"), ("b", 8, "000003.png"),
        ("a", 9, "000004.png")]
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert index == rows and index[1]["len"] == len("two blue squares")
    assert index[0]["extras"] == {"negative": "extras/negative/000000.png"}
    image = np.asarray(Image.open(out / "000003.png"), dtype=np.int16)
    negative = np.asarray(Image.open(out / "extras/negative/000003.png"), dtype=np.int16)
    assert np.abs(image + negative - 255).max() <= 1  # the extra is the negative of its own sample
    other, _ = _sample(tmp_path, "b", gen_bsz=3)  # other batches, same images
    for row in rows:
        assert (out / row["file"]).read_bytes() == (other / row["file"]).read_bytes()
    assert (out / "provenance.json").is_file()


def test_a_failed_png_write_fails_the_sampling_job(tmp_path):
    """PNG files are written in threads beside the generation; a write that fails must still fail the job."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "extras").write_text("a file where the extras folder goes")
    with pytest.raises(OSError):
        _sample(tmp_path, "a", gen_bsz=2)


def test_reference_images_of_a_prompt_set_or_a_whole_split(tmp_path):
    from t2i.eval.evaluate import reference_images

    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("b\na\n")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "test.jsonl").write_text('{"id": 1, "prompt": "x", "reference": "c"}\n'
                                                     '{"id": 2, "prompt": "y", "reference": "c"}\n')
    assert reference_images(tmp_path, "split-train") == [tmp_path / "images" / "b.png", tmp_path / "images" / "a.png"]
    assert reference_images(tmp_path, "test") == [tmp_path / "images" / "c.png"]
    with pytest.raises(FileNotFoundError, match="no such split"):
        reference_images(tmp_path, "split-val")
