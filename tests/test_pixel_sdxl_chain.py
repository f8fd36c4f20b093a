"""configs/shapes_pixel_sdxl_chain.yaml end to end at tiny size through the real Snakefile: the Shapes VAE and
latent SDXL teacher (trained assets), distillation (encoder pass, decoder pass), the encoder/decoder fine-tune,
full training and post-hoc EMA, each sampled and scored; and what each stage may and may not change."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from workflow_harness import ROOT, snakemake, write_config

pytestmark = pytest.mark.slow
CHAIN = ["shapes_px_distill_enc", "shapes_px_distill_dec", "shapes_px_encdec", "shapes_px_full", "shapes_px_full_ema"]


def chain_config() -> dict:
    """config.yaml's Shapes dataset and assets with the chain config's assets and experiments, all shrunk."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    chain = yaml.safe_load((ROOT / "configs" / "shapes_pixel_sdxl_chain.yaml").read_text())
    assert chain["run"] == CHAIN
    cfg = {"run": chain["run"], "datasets": base["datasets"], "experiments": chain["experiments"],
           "pretrained": {**base["pretrained"], **chain["pretrained"]}, "report": {"grid_images": 4}}
    cfg["datasets"]["shapes32"].update(num_train=96, num_test=16, num_holdout=8)
    del cfg["pretrained"]["minilm"], cfg["pretrained"]["inception"], cfg["pretrained"]["shapes-sd3"]
    for name, steps in (("shapes-cnn", 20), ("shapes-clip", 20), ("shapes-vae", 6), ("shapes-sdxl", 6)):
        cfg["pretrained"][name].update(steps=steps, **({"batch_size": 16} if name != "shapes-cnn" else {}))
    for exp in cfg["experiments"].values():
        exp.update(sample={**exp["sample"], "prompt_sets": ["test"], "steps": 2, "gen_bsz": 8},
                   evaluate={**exp["evaluate"], "kid_subset_size": 8},
                   resources={**exp["resources"], "cpus_per_task": 1})
        if "train" in exp:
            exp["train"] = {**exp["train"], "steps": 4, "batch_size": 8, "warmup_steps": 1, "save_every": 2,
                            "log_every": 2}
    cfg["experiments"]["shapes_px_full"]["train"]["snapshot_every"] = 2
    return cfg


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("chain")
    write_config(workdir, chain_config())
    snakemake(workdir, "--cores", "2", timeout=1500)
    return workdir / "results"


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")


def _part(weights: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith(prefix)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_stage_is_trained_sampled_and_scored(chain_run):
    for exp in CHAIN:
        metrics = json.loads((chain_run / exp / "metrics" / "test.json").read_text())
        assert {"fid", "shapes"} <= set(metrics)
    assert all(name in (chain_run / "report" / "index.html").read_text() for name in CHAIN)
    teacher = chain_run / "pretrained" / "shapes-sdxl"
    index = json.loads((teacher / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and {"unet", "vae", "text_encoder_2"} <= set(index)


def test_each_stage_trains_only_its_part(chain_run):
    model = {exp: _weights(chain_run / exp / "train" / "model") for exp in CHAIN}
    teacher = load_file(chain_run / "pretrained" / "shapes-sdxl" / "unet" / "diffusion_pytorch_model.safetensors")
    body = _part(model["shapes_px_distill_enc"], "body.")
    # the distilled student's body is the teacher's U-Net, cut
    assert _same({k[len("body."):]: v for k, v in body.items()},
                 {k: teacher[k] for k in (k[len("body."):] for k in body)})
    enc, dec = "patch_encoder.", "patch_decoder."
    # decoder pass: only the decoder moves; encoder/decoder stage: the body (lr 0) does not
    assert _same(_part(model["shapes_px_distill_dec"], enc), _part(model["shapes_px_distill_enc"], enc))
    assert not _same(_part(model["shapes_px_distill_dec"], dec), _part(model["shapes_px_distill_enc"], dec))
    assert _same(_part(model["shapes_px_encdec"], "body."), body)
    assert not _same(_part(model["shapes_px_encdec"], enc), _part(model["shapes_px_distill_dec"], enc))
    assert not _same(_part(model["shapes_px_full"], "body."), body)
    ema = json.loads((chain_run / "shapes_px_full_ema" / "train" / "model" / "t2i_model.json").read_text())
    assert ema["meta"]["posthoc_ema"]["snapshot_steps"] == [2, 4]


def test_distillation_logs_where_its_body_came_from(chain_run):
    log = (chain_run / "logs" / "shapes_px_distill_enc" / "train.log").read_text()
    assert "body from the teacher's U-Net" in log
