"""Secrets from the environment reach the servers that need them, and nothing that is written or logged."""
from __future__ import annotations

import json
import logging

import pytest
from http_server import LoopbackServer, serve_hf_repo

from t2i.checkpoints.assemble import assemble_asset
from t2i.data.download import download_url
from t2i.data.hf import HubDownloadError, snapshot
from t2i.utils.provenance import write_provenance
from t2i.utils.secrets import redact

HF_TOKEN = "hf_" + "Q7x2" * 9
OPENAI_KEY = "sk-proj-" + "Zk9w" * 10


@pytest.fixture(autouse=True)
def secrets_in_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "urllib3", "t2i"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def assert_no_secret(text: str) -> None:
    assert HF_TOKEN not in text and OPENAI_KEY not in text
    assert HF_TOKEN[:12] not in text and OPENAI_KEY[:12] not in text  # not even a prefix


def test_redact_masks_env_secrets_anywhere():
    record = {"llm": {"api_key": OPENAI_KEY, "model": "gpt-4"},
              "notes": [f"curl -H 'Authorization: Bearer {HF_TOKEN}'", ("tuple", OPENAI_KEY)],
              "token": HF_TOKEN, "steps": 3}
    red = redact(record)
    assert_no_secret(json.dumps(red))
    assert red["llm"]["model"] == "gpt-4" and red["steps"] == 3
    assert red["notes"][0].startswith("curl -H 'Authorization: Bearer ")


def test_redact_masks_secret_keys_but_keeps_token_counts():
    red = redact({"Authorization": "Bearer not-from-env", "client_secret": "s3cr3t", "access_token": "abc",
                  "num_tokens": 128, "token_length": 512, "max_tokens": 64, "tokenizer": "t5"})
    assert red == {"Authorization": "***", "client_secret": "***", "access_token": "***",
                   "num_tokens": 128, "token_length": 512, "max_tokens": 64, "tokenizer": "t5"}


def test_provenance_never_holds_secrets(tmp_path):
    config = {"llm": {"provider": "openai", "api_key": OPENAI_KEY},
              "hub": {"headers": {"Authorization": f"Bearer {HF_TOKEN}"}}}
    written = write_provenance(tmp_path, config, extra={"command": f"download --token {HF_TOKEN}"})
    text = (tmp_path / "provenance.json").read_text()
    assert_no_secret(text)
    assert_no_secret(json.dumps(written))
    assert json.loads(text)["config"]["llm"]["provider"] == "openai"  # the rest is kept


def test_hub_token_is_sent_but_never_logged_or_recorded(tmp_path, monkeypatch, debug_logs, capsys):
    from transformers import BertConfig

    published = tmp_path / "published"
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2).save_pretrained(published)
    with LoopbackServer() as srv:
        serve_hf_repo(srv, "acme/private", published)
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)
        out = assemble_asset("enc", {"source": "huggingface", "repo_id": "acme/private"},
                             tmp_path / "pretrained" / "enc")
        with pytest.raises(HubDownloadError) as err:  # a failure message must not leak it either
            snapshot("acme/gone", tmp_path / "gone")

    assert srv.requests and all(r.headers.get("authorization") == f"Bearer {HF_TOKEN}" for r in srv.requests)
    captured = capsys.readouterr()
    assert "acme/private" in debug_logs.text  # the logs were captured ...
    assert_no_secret(debug_logs.text + captured.out + captured.err + str(err.value))  # ... without the token
    for path in out.rglob("*"):
        assert_no_secret(path.read_text(errors="replace"))


def test_download_with_auth_header_logs_nothing_secret(tmp_path, debug_logs, capsys):
    with LoopbackServer() as srv:
        srv.add("/w.bin", b"x" * 1000, fail_first=1)
        download_url(srv.url("/w.bin"), tmp_path / "w.bin",
                     headers={"Authorization": f"Bearer {HF_TOKEN}"}, backoff=0.01)
    assert srv.requests_for("/w.bin")[-1].headers["authorization"] == f"Bearer {HF_TOKEN}"
    captured = capsys.readouterr()
    assert "retrying" in debug_logs.text
    assert_no_secret(debug_logs.text + captured.out + captured.err)
