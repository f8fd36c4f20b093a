"""t2i.data.hf.snapshot against a loopback server that answers like the Hub's API."""
from __future__ import annotations

import socket

import pytest
import torch
from http_server import LoopbackServer, serve_hf_repo
from transformers import AutoModel, BertConfig, BertModel

from t2i.data.hf import HubDownloadError, snapshot

REPO = "acme/tiny-bert"


@pytest.fixture
def tiny_bert(tmp_path):
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=37, max_position_embeddings=64))
    folder = tmp_path / "published"
    model.save_pretrained(folder)
    return model, folder


def test_snapshot_from_fake_hub_loads_with_transformers(tmp_path, tiny_bert, monkeypatch):
    model, folder = tiny_bert
    with LoopbackServer() as srv:
        files = serve_hf_repo(srv, REPO, folder)
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        dest = snapshot(REPO, tmp_path / "dest")

    assert dest == (tmp_path / "dest").resolve()
    assert {name: (dest / name).read_bytes() for name in files} == files
    loaded = AutoModel.from_pretrained(dest)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).last_hidden_state, model.eval()(ids).last_hidden_state)
    downloads = [r for r in srv.requests if r.method == "GET" and "/resolve/" in r.path]
    assert sorted(r.path.rsplit("/", 1)[1] for r in downloads) == sorted(files)
    assert not any("authorization" in r.headers for r in srv.requests)  # no token in env: none sent


def test_allow_patterns_limit_the_files(tmp_path, tiny_bert, monkeypatch):
    _, folder = tiny_bert
    with LoopbackServer() as srv:
        serve_hf_repo(srv, REPO, folder)
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        dest = snapshot(REPO, tmp_path / "dest", allow_patterns=["*.json"])
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == ["config.json"]


def test_missing_repo_names_it_and_the_token(tmp_path, monkeypatch):
    with LoopbackServer() as srv:  # the Hub answers 401 + RepoNotFound for missing, private and gated repos
        srv.add("/api/models/acme/absent/revision/main", {"error": "Repository not found"}, status=401,
                headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        with pytest.raises(HubDownloadError, match=r"model 'acme/absent'.*HF_TOKEN"):
            snapshot("acme/absent", tmp_path / "dest")


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_hub_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    dest = tmp_path / "dest"
    with pytest.raises(HubDownloadError) as err:
        snapshot(REPO, dest, revision="v1")
    message = str(err.value)
    assert "\n" not in message
    assert f"'{REPO}' (revision v1)" in message
    assert f"hf download {REPO} --repo-type model --revision v1" in message
    assert f"place the files in {dest}" in message


def test_unreachable_hub_uses_files_placed_by_hand(tmp_path, tiny_bert, monkeypatch):
    model, folder = tiny_bert
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    dest = tmp_path / "dest"
    model.save_pretrained(dest)
    assert snapshot(REPO, dest) == dest.resolve()
    assert AutoModel.from_pretrained(dest).config.hidden_size == 32
