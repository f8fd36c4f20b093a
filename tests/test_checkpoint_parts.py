"""Source `torch_parts`: a torch checkpoint published as several pickles (LayoutLLM-T2I's GLIGEN).

The parts are written the way the original trainer saves its checkpoint
(``{model, text_encoder, autoencoder, diffusion, opt, scheduler, iters, config_dict}``,
``config_dict = vars(OmegaConf DictConfig)``), with classes named and pickled like
omegaconf 2.1's; omegaconf itself is not installed and must never be imported.
"""
from __future__ import annotations

import builtins
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml
from http_server import HF_COMMIT, LoopbackServer, serve_hf_repo
from omegaconf_pickles import config_dict, fake_omegaconf, save_parts
from safetensors.torch import load_file

from t2i.checkpoints.assemble import AssetError, assemble_asset
from t2i.checkpoints.hashing import verify_sha256sums
from t2i.checkpoints.restricted_pickle import RefusedGlobalError, load_checkpoint, to_plain
from t2i.checkpoints.torch_parts import PartsError, merge_parts
from t2i.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]
REPO = "leigangqu/LayoutLLM-T2I"
CHUNK0, CHUNK1, OTHERS = (f"checkpoints_00335001_{n}.pth" for n in ("model_chunk0", "model_chunk1", "others"))
CONFIG = {  # GLIGEN's yaml, then `config.update(vars(args))` (main.py)
    "model": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
              "params": {"image_size": 64, "channel_mult": [1, 2, 4, 4], "fuser_type": "gatedSA",
                         "grounding_tokenizer": {
                             "target": "ldm.modules.diffusionmodules.text_grounding_net.PositionNet",
                             "params": {"in_dim": 768, "out_dim": 768}}}},
    "autoencoder": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {"scale_factor": 0.18215}},
    "text_encoder": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
    "diffusion": {"target": "ldm.models.diffusion.ldm.LatentDiffusion",
                  "params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}},
    "max_relations": 10, "inpaint_mode": False, "ckpt": None, "base_learning_rate": 5e-5,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- published parts ------------------------------------------------------------------------------------

def _tensors(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.randn(shape) for k, shape in shapes.items()}


@pytest.fixture
def ckpt():
    """The checkpoint the trainer saved, before it was split."""
    torch.manual_seed(0)
    base = torch.randn(3, 4)
    model = {**_tensors({"input_blocks.0.0.weight": (8, 4, 3, 3), "input_blocks.0.0.bias": (8,),
                         "middle_block.1.transformer_blocks.0.rela_fuse.alpha_attn": (),
                         "position_net.null_positive_feature": (768,)}),
             "out.2.weight": base, "out.2.weight_t": base.t(), "out.2.weight_row": base[1]}  # shared storage
    text_encoder = {"transformer.text_model.embeddings.position_ids": torch.arange(77).unsqueeze(0),
                    **_tensors({"transformer.text_model.embeddings.token_embedding.weight": (50, 16),
                                "transformer.text_model.final_layer_norm.weight": (16,)})}
    autoencoder = _tensors({"encoder.conv_in.weight": (4, 3, 3, 3), "decoder.conv_out.bias": (3,)})
    opt = {"state": {0: {"step": torch.tensor(335001.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}},
           "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                             "foreach": None, "maximize": False, "params": [0]}]}
    scheduler = {"base_lrs": [5e-5], "last_epoch": 335001, "_step_count": 335002, "verbose": False,
                 "_last_lr": [5e-5], "lr_lambdas": [None]}
    return dict(model=model, text_encoder=text_encoder, autoencoder=autoencoder,
                diffusion={"betas": torch.linspace(0.00085, 0.012, 10)}, opt=opt, scheduler=scheduler,
                iters=335001, config_dict=config_dict(CONFIG))


def split(ckpt: dict) -> dict[str, object]:
    """chunk0: ``{"model": first half}``; chunk1: the second half as a flat state dict; others: the rest."""
    keys = list(ckpt["model"])
    first = {k: ckpt["model"][k] for k in keys[:3]}
    second = {k: ckpt["model"][k] for k in keys[3:]}
    return {CHUNK0: {"model": first}, CHUNK1: second, OTHERS: {k: v for k, v in ckpt.items() if k != "model"}}


@pytest.fixture
def published(tmp_path, ckpt):
    return save_parts(tmp_path / "published", split(ckpt))


@pytest.fixture
def srv():
    with LoopbackServer() as server:
        yield server


def hub_cfg(files: dict[str, bytes], **extra) -> dict:
    return {"source": "torch_parts", "repo_id": REPO, "revision": HF_COMMIT,
            "parts": [{"filename": name, "sha256": sha(data)} for name, data in files.items()], **extra}


def url_cfg(srv: LoopbackServer, files: dict[str, bytes]) -> dict:
    for name, data in files.items():
        srv.add(f"/files/{name}", data)
    return {"source": "torch_parts",
            "parts": [{"filename": name, "sha256": sha(data), "url": srv.url(f"/files/{name}")}
                      for name, data in files.items()]}


def check_gligen(out: Path, ckpt: dict, files: dict[str, bytes], cfg: dict) -> None:
    """The three components as safetensors + config, position_ids and opt dropped, the record complete."""
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS", "autoencoder", "checkpoint.json", "model", "provenance.json", "text_encoder"]
    for component in ("model", "autoencoder", "text_encoder"):
        assert sorted(p.name for p in (out / component).iterdir()) == ["config.json", "model.safetensors"]
        expected = {k: v for k, v in ckpt[component].items() if not k.endswith("position_ids")}
        loaded = load_file(out / component / "model.safetensors")
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
        assert json.loads((out / component / "config.json").read_text()) == CONFIG[component]
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["iters"] == 335001 and record["config"] == CONFIG
    assert record["dropped"] == ["diffusion", "opt", "scheduler"]
    assert record["parts"] == [{"filename": n, "sha256": sha(d)} for n, d in files.items()]
    assert record["components"]["text_encoder"]["dropped_keys"] == ["transformer.text_model.embeddings.position_ids"]
    assert verify_sha256sums(out) == 7
    assert json.loads((out / "provenance.json").read_text())["config"] == cfg
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no staging or temp folder left
    assert "omegaconf" not in sys.modules


# --- the restricted unpickler -------------------------------------------------------------------------

def test_omegaconf_config_is_read_as_inert_stubs_and_plain_data(tmp_path, ckpt):
    with fake_omegaconf():
        torch.save({"config_dict": ckpt["config_dict"], "model": ckpt["model"]}, tmp_path / "c.pth")
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert "omegaconf" not in sys.modules
    meta = loaded["config_dict"]["_metadata"]
    assert type(meta).omegaconf_class == "omegaconf.base.ContainerMetadata"
    assert meta.state["object_type"] is dict and meta.state["ref_type"] is typing.Any
    model_node = loaded["config_dict"]["_content"]["model"]
    assert type(model_node).omegaconf_class == "omegaconf.dictconfig.DictConfig"
    assert model_node.state["_parent"].state["_content"]["model"] is model_node  # parent links survive
    assert to_plain(loaded["config_dict"]) == CONFIG
    assert to_plain(model_node) == CONFIG["model"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in ckpt["model"].items())


def _marker_payloads(marker: Path) -> dict[str, object]:
    class Call:
        def __init__(self, func, *args):
            self.func, self.args = func, args

        def __reduce__(self):
            return self.func, self.args

    return {"posix.system": Call(os.system, f"touch {marker}"),
            "builtins.eval": Call(builtins.eval, f"open({str(marker)!r}, 'w').write('ran')"),
            "subprocess.Popen": Call(subprocess.Popen, ["touch", str(marker)])}


@pytest.mark.parametrize("refused", ["posix.system", "builtins.eval", "subprocess.Popen"])
def test_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, refused):
    marker = tmp_path / "marker"
    torch.save({"model": {"w": torch.ones(2)}, "hook": _marker_payloads(marker)[refused]}, tmp_path / "evil.pth")
    with pytest.raises(RefusedGlobalError, match=rf"^{tmp_path}/evil\.pth: refused global {refused} ") as err:
        load_checkpoint(tmp_path / "evil.pth")
    assert err.value.global_name == refused
    assert not marker.exists()


def test_malicious_part_fails_the_asset_and_runs_nothing(srv, tmp_path, ckpt):
    marker = tmp_path / "marker"
    parts = split(ckpt)
    parts[OTHERS]["scheduler"] = _marker_payloads(marker)["posix.system"]
    cfg = url_cfg(srv, save_parts(tmp_path / "published", parts))
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[2\]: {OTHERS}: refused global posix\.system"):
        assemble_asset("gligen", cfg, tmp_path / "pretrained" / "gligen")
    assert not marker.exists() and not (tmp_path / "pretrained" / "gligen").exists()


# --- merging --------------------------------------------------------------------------------------------

def test_merge_refuses_overlaps_and_incomplete_checkpoints():
    a, b = {"model": {"w": torch.zeros(1)}, "iters": 1}, {"model": {"v": torch.zeros(1)}}
    merged = merge_parts([a, b], ["a.pth", "b.pth"], components=["model"])
    assert sorted(merged["model"]) == ["v", "w"] and list(a["model"]) == ["w"]  # the parts are not modified
    with pytest.raises(PartsError, match=r"^model\.w is in both a\.pth and c\.pth$"):
        merge_parts([a, b, {"model": {"w": torch.ones(1)}}], ["a.pth", "b.pth", "c.pth"], components=["model"])
    with pytest.raises(PartsError, match=r"^entry 'iters' is in both a\.pth and c\.pth, and is not a state dict"):
        merge_parts([a, {"iters": 2}], ["a.pth", "c.pth"], components=["model"])
    with pytest.raises(PartsError, match=r"^no 'autoencoder' in any part \(a\.pth, b\.pth\)$"):
        merge_parts([a, b], ["a.pth", "b.pth"])
    with pytest.raises(PartsError, match=r"^'text_encoder' \(from b\.pth\) is not a non-empty state dict"):
        merge_parts([a, {"text_encoder": {}, "autoencoder": {"x": torch.zeros(1)}}], ["a.pth", "b.pth"])


# --- the asset source -----------------------------------------------------------------------------------

def test_parts_from_fake_hub_become_safetensors_components(srv, tmp_path, ckpt, published, monkeypatch):
    serve_hf_repo(srv, REPO, tmp_path / "published")
    monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
    cfg = hub_cfg(published)
    out = assemble_asset("gligen", cfg, tmp_path / "pretrained" / "gligen")
    check_gligen(out, ckpt, published, cfg)
    provenance = json.loads((out / "provenance.json").read_text())["source"]
    assert provenance["repo_id"] == REPO and provenance["revision"] == HF_COMMIT
    assert provenance["dropped"] == ["diffusion", "opt", "scheduler"]
    gets = [r.path.rsplit("/", 1)[1] for r in srv.requests if r.method == "GET" and "/resolve/" in r.path]
    assert sorted(gets) == sorted(published)


def test_parts_from_urls_and_a_missing_part_resumes(srv, tmp_path, ckpt, published):
    cfg = url_cfg(srv, published)
    out = tmp_path / "pretrained" / "gligen"
    srv.routes[f"/files/{OTHERS}"].status = 404
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[2\]: {OTHERS}: http://.*HTTP 404"):
        assemble_asset("gligen", cfg, out)
    assert not out.exists()
    srv.routes[f"/files/{OTHERS}"].status = 200
    assemble_asset("gligen", cfg, out)
    check_gligen(out, ckpt, published, cfg)
    assert [len(srv.requests_for(f"/files/{name}")) for name in published] == [1, 1, 2]  # verified parts kept


def test_part_missing_from_the_hub_repo(srv, tmp_path, published, monkeypatch):
    (tmp_path / "published" / OTHERS).unlink()
    serve_hf_repo(srv, REPO, tmp_path / "published")
    srv.add(f"/{REPO}/resolve/{HF_COMMIT}/{OTHERS}", "Entry not found", status=404,  # as the Hub answers
            headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
    monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[2\]: {OTHERS}: cannot fetch {OTHERS} of "
                                         rf"model '{REPO}' .*: no such file in the repository \(HTTP 404\)$"):
        assemble_asset("gligen", hub_cfg(published), tmp_path / "pretrained" / "gligen")


def test_wrong_sha256_deletes_the_part_so_the_rerun_fetches_it(srv, tmp_path, ckpt, published, monkeypatch):
    serve_hf_repo(srv, REPO, tmp_path / "published")
    monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
    cfg = hub_cfg(published)
    bad = copy.deepcopy(cfg)
    bad["parts"][1]["sha256"] = "0" * 64
    out = tmp_path / "pretrained" / "gligen"
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[1\]\.sha256: {CHUNK1}: checksum mismatch: "
                                         rf"expected sha256 0{{64}}, got {sha(published[CHUNK1])}"):
        assemble_asset("gligen", bad, out)
    staging = tmp_path / "pretrained" / "gligen.download"
    assert (staging / CHUNK0).is_file() and not (staging / CHUNK1).exists()
    assemble_asset("gligen", cfg, out)
    check_gligen(out, ckpt, published, cfg)
    gets = [r.path.rsplit("/", 1)[1] for r in srv.requests if r.method == "GET" and "/resolve/" in r.path]
    assert sorted(gets) == sorted([CHUNK0, CHUNK1, CHUNK1, OTHERS])  # the verified chunk0 was not fetched again


def test_truncated_part(srv, tmp_path, published):
    files = {**published, CHUNK1: published[CHUNK1][:len(published[CHUNK1]) // 2]}
    cfg = url_cfg(srv, files)
    cfg["parts"][1]["sha256"] = sha(published[CHUNK1])  # the published hash of the whole file
    out = tmp_path / "pretrained" / "gligen"
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[1\]: {CHUNK1}: .*checksum mismatch"):
        assemble_asset("gligen", cfg, out)
    assert not (tmp_path / "pretrained" / "gligen.download" / CHUNK1).exists()
    cfg["parts"][1]["sha256"] = sha(files[CHUNK1])  # a hash taken of the truncated file
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[1\]: {CHUNK1}: not a readable torch file"):
        assemble_asset("gligen", cfg, out)
    assert not out.exists()


@pytest.mark.parametrize("foreign, message", [
    ([torch.zeros(2)], r"not a checkpoint part \(it holds a list, not a dict\)"),
    ({"hello": "world", "n": {"a": 1}}, r"not a checkpoint part \(a dict without tensors; keys: 'hello', 'n'\)"),
])
def test_foreign_part(srv, tmp_path, ckpt, foreign, message):
    parts = split(ckpt)
    parts[CHUNK1] = foreign
    cfg = url_cfg(srv, save_parts(tmp_path / "published", parts))
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[1\]: {CHUNK1}: {message}"):
        assemble_asset("gligen", cfg, tmp_path / "pretrained" / "gligen")


def test_overlapping_parts(srv, tmp_path, ckpt):
    parts = split(ckpt)
    parts[CHUNK1]["input_blocks.0.0.bias"] = torch.zeros(8)  # also in chunk0
    cfg = url_cfg(srv, save_parts(tmp_path / "published", parts))
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts: model\.input_blocks\.0\.0\.bias is in both "
                                         rf"{CHUNK0} and {CHUNK1}$"):
        assemble_asset("gligen", cfg, tmp_path / "pretrained" / "gligen")


@pytest.mark.parametrize("edit, message", [
    (lambda c: [c.update(repo_id=None), *(p.update(url="http://x.invalid/p") for p in c["parts"]),
                c["parts"][0].pop("sha256")], r"parts\[0\]\.sha256: required for a part with a url: its published"),
    (lambda c: c["parts"][1].update(sha256="abc"), r"parts\[1\]\.sha256: not a SHA-256 hex digest: 'abc'"),
    (lambda c: c["parts"][2].update(filename="../x.pth"), r"parts\[2\]\.filename: not a relative file name"),
    (lambda c: c["parts"][0].update(url="http://example.invalid/x"), r"parts\[0\]: give either `repo_id`"),
    (lambda c: c.update(repo_id=None), r"parts\[0\]: give either `repo_id`"),
    (lambda c: c.update(parts=[]), r"parts: needs at least one part"),
])
def test_config_errors_name_the_key(tmp_path, published, edit, message):
    cfg = hub_cfg(published)
    edit(cfg)
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.{message}"):
        assemble_asset("gligen", cfg, tmp_path / "gligen")


def test_schema_accepts_torch_parts_and_fills_defaults():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["pretrained"]["gligen"] = {"source": "torch_parts", "repo_id": REPO,
                                   "parts": [{"filename": CHUNK0, "sha256": "1" * 64}]}
    asset = validate_config(raw)["pretrained"]["gligen"]
    assert asset["components"] == ["model", "autoencoder", "text_encoder"] and asset["repo_type"] == "model"
    raw["pretrained"]["gligen"]["parts"][0].pop("filename")
    with pytest.raises(ConfigError, match=r"^pretrained\.gligen\.parts\.0: 'filename' is a required property"):
        validate_config(raw)


def test_hub_parts_without_sha256_are_verified_against_the_hubs(srv, tmp_path, ckpt, published, monkeypatch):
    serve_hf_repo(srv, REPO, tmp_path / "published")
    monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
    cfg = hub_cfg(published)
    for part in cfg["parts"]:
        part["sha256"] = None
    out = assemble_asset("gligen", cfg, tmp_path / "pretrained" / "gligen")
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["parts"] == [{"filename": n, "sha256": sha(d)} for n, d in published.items()]

    route = srv.routes[f"/{REPO}/resolve/{HF_COMMIT}/{CHUNK1}"]  # the Hub's sha256 and the file disagree
    route.headers["ETag"] = f'"{"0" * 64}"'
    shutil.rmtree(out)
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[1\]\.sha256: {CHUNK1}: checksum mismatch: "
                                         rf"expected sha256 0{{64}} \(the one the Hub publishes for it\)"):
        assemble_asset("gligen", cfg, out)
    route.headers["ETag"] = '"not-an-lfs-etag"'
    with pytest.raises(AssetError, match=rf"^pretrained\.gligen\.parts\[1\]\.sha256: the Hub publishes no SHA-256 "
                                         rf"for {CHUNK1} of model '{REPO}' .*: configure its sha256$"):
        assemble_asset("gligen", cfg, out)
