"""download_url against a loopback server: resume, retry, errors, verification."""
from __future__ import annotations

import hashlib
import os

import pytest
from http_server import LoopbackServer

from t2i.data.download import DownloadError, download_url

DATA = os.urandom(3 * 1024 * 1024 + 123)  # several read chunks
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def srv():
    with LoopbackServer() as server:
        yield server


def test_download_verifies_and_renames(srv, tmp_path):
    srv.add("/w.bin", DATA)
    dest = download_url(srv.url("/w.bin"), tmp_path / "sub" / "w.bin", sha256=SHA, size=len(DATA))
    assert dest == tmp_path / "sub" / "w.bin"
    assert dest.read_bytes() == DATA
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.bin"]  # no partial left behind


def test_dropped_connection_resumes_with_range(srv, tmp_path):
    srv.add("/w.bin", DATA, drop_after=1_000_000)
    dest = download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=SHA, backoff=0.01)
    assert dest.read_bytes() == DATA
    first, second = srv.requests_for("/w.bin")
    assert "range" not in first.headers
    resumed_at = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1_000_000  # only the missing tail was fetched again


def test_partial_from_a_killed_run_is_resumed(srv, tmp_path):
    srv.add("/w.bin", DATA)
    (tmp_path / "w.bin.partial").write_bytes(DATA[:12345])
    download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=SHA)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert [r.headers.get("range") for r in srv.requests_for("/w.bin")] == ["bytes=12345-"]


def test_server_ignoring_range_restarts_from_zero(srv, tmp_path):
    srv.add("/w.bin", DATA, ignore_range=True)
    (tmp_path / "w.bin.partial").write_bytes(DATA[:5000])
    download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=SHA)
    assert (tmp_path / "w.bin").read_bytes() == DATA  # not the first 5000 bytes twice


def test_complete_partial_is_finished_without_refetching(srv, tmp_path):
    srv.add("/w.bin", DATA)
    (tmp_path / "w.bin.partial").write_bytes(DATA)
    download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=SHA)  # the server answers 416
    assert (tmp_path / "w.bin").read_bytes() == DATA


def test_server_errors_are_retried(srv, tmp_path):
    srv.add("/w.bin", DATA, fail_first=3)
    download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=SHA, retries=3, backoff=0.01)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert len(srv.requests_for("/w.bin")) == 4


def test_retries_run_out_with_one_clear_error(srv, tmp_path):
    srv.add("/w.bin", DATA, fail_first=10)
    with pytest.raises(DownloadError) as err:
        download_url(srv.url("/w.bin"), tmp_path / "w.bin", retries=2, backoff=0.01)
    assert str(err.value) == (f"{srv.url('/w.bin')}: giving up after 3 attempts; "
                              "last error: HTTP 500 Internal Server Error")
    assert len(srv.requests_for("/w.bin")) == 3
    assert not (tmp_path / "w.bin").exists()


def test_404_is_not_retried(srv, tmp_path):
    with pytest.raises(DownloadError, match=r"^http://127\.0\.0\.1:\d+/nope\.bin: HTTP 404 Not Found$"):
        download_url(srv.url("/nope.bin"), tmp_path / "nope.bin", retries=5, backoff=10)
    assert len(srv.requests_for("/nope.bin")) == 1


def test_checksum_mismatch_leaves_nothing(srv, tmp_path):
    srv.add("/w.bin", DATA)
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=f"checksum mismatch: expected sha256 {wrong}, got {SHA}"):
        download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=wrong)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the bad partial


def test_size_mismatch(srv, tmp_path):
    srv.add("/w.bin", DATA)
    with pytest.raises(DownloadError, match=f"size mismatch: expected 10 bytes, got {len(DATA)}"):
        download_url(srv.url("/w.bin"), tmp_path / "w.bin", size=10)
    assert list(tmp_path.iterdir()) == []


def test_present_file_with_right_checksum_is_not_downloaded(srv, tmp_path):
    srv.add("/w.bin", DATA)
    (tmp_path / "w.bin").write_bytes(DATA)
    download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=SHA)
    assert srv.requests == []


def test_present_file_with_wrong_checksum_is_replaced(srv, tmp_path):
    srv.add("/w.bin", DATA)
    (tmp_path / "w.bin").write_bytes(b"stale")
    download_url(srv.url("/w.bin"), tmp_path / "w.bin", sha256=SHA.upper())
    assert (tmp_path / "w.bin").read_bytes() == DATA


def test_headers_are_sent_but_never_logged(srv, tmp_path, caplog, capsys):
    secret = "Bearer hf_" + "x" * 30
    srv.add("/w.bin", DATA, fail_first=1)
    with caplog.at_level("DEBUG"):
        download_url(srv.url("/w.bin"), tmp_path / "w.bin", headers={"Authorization": secret}, backoff=0.01)
    assert all(r.headers["authorization"] == secret for r in srv.requests_for("/w.bin"))
    captured = capsys.readouterr()
    assert "retrying" in caplog.text  # the retry was logged ...
    assert "hf_xxx" not in caplog.text + captured.out + captured.err  # ... without the header
