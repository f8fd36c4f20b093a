"""Resumable, verified HTTP downloads.

``download_url`` streams into ``DEST.partial``; a killed or dropped transfer resumes
from there with a ``Range`` request. Connection errors and 5xx answers are retried
with exponential backoff. The file is checked (size, SHA-256) before it is renamed
onto ``dest``, so ``dest`` only ever holds a complete, verified file.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import requests
from tqdm.auto import tqdm

from t2i.checkpoints.hashing import sha256_file
from t2i.utils.secrets import redact_text

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16  # at most this much is fetched again after a dropped connection
_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DownloadError(RuntimeError):
    """A download that cannot succeed: the message names the URL and what is wrong."""


class _Transient(Exception):
    """A failure worth retrying (connection lost, 5xx)."""


def download_url(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
                 retries: int = 5, backoff: float = 1.0, timeout: float = 60,
                 headers: dict[str, str] | None = None, refuse_web_page: bool = False) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    An existing ``dest`` that matches ``sha256`` (or ``size``, or anything when neither
    is given) is kept as is. ``headers`` are sent but never logged (they may carry a token).
    ``refuse_web_page``: an HTML answer (a file host's sign-in, quota or warning page) is an error.
    Raises ``DownloadError`` on HTTP errors, exhausted retries, or a size/checksum mismatch.
    """
    dest = Path(dest)
    shown = redact_text(url)
    sha256 = sha256.lower() if sha256 else None
    if dest.exists():
        problem = _verify(dest, sha256, size)
        if problem is None:
            log.info("%s: already present, not downloading", dest)
            return dest
        log.warning("%s: present but %s; downloading again", dest, problem)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")

    for attempt in range(retries + 1):
        try:
            _fetch(url, partial, timeout=timeout, headers=headers or {}, size=size, refuse_web_page=refuse_web_page)
            break
        except _RETRYABLE + (_Transient,) as e:
            reason = "connection broken mid-transfer" if isinstance(e, requests.exceptions.ChunkedEncodingError) \
                else redact_text(str(e))
            if attempt == retries:
                raise DownloadError(f"{shown}: giving up after {retries + 1} attempts; last error: {reason}") from None
            wait = backoff * 2 ** attempt
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", shown, reason, wait, attempt + 1, retries)
            time.sleep(wait)

    problem = _verify(partial, sha256, size)
    if problem is not None:
        partial.unlink()
        raise DownloadError(f"{shown}: {problem}; the download was deleted")
    os.replace(partial, dest)
    log.info("%s: saved to %s", shown, dest)
    return dest


def _verify(path: Path, sha256: str | None, size: int | None) -> str | None:
    """What is wrong with ``path`` (``None`` if nothing)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch: expected {size} bytes, got {actual_size}"
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            return f"checksum mismatch: expected sha256 {sha256}, got {actual}"
    return None


def _fetch(url: str, partial: Path, *, timeout: float, headers: dict[str, str], size: int | None,
           refuse_web_page: bool) -> None:
    """Append the rest of ``url`` to ``partial`` (restarting if the server cannot resume)."""
    offset = partial.stat().st_size if partial.exists() else 0
    request_headers = {"Accept-Encoding": "identity", **headers}  # byte offsets must be those of the file
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    with requests.get(url, stream=True, timeout=timeout, headers=request_headers) as r:
        if r.status_code == 416 and offset:
            total = _content_range_total(r.headers.get("Content-Range"))
            if total == offset:
                return  # the partial file is already complete
            partial.unlink()
            raise _Transient(f"server refused to resume at byte {offset}; restarting from 0")
        if r.status_code >= 500 or r.status_code == 429:
            raise _Transient(f"HTTP {r.status_code} {r.reason}")
        if r.status_code >= 400:
            raise DownloadError(f"{redact_text(url)}: HTTP {r.status_code} {r.reason}")
        if refuse_web_page and r.headers.get("Content-Type", "").split(";")[0].strip() == "text/html":
            raise DownloadError(f"{redact_text(url)}: the server answered with a web page, not the file")
        if r.status_code == 206:
            if _content_range_start(r.headers.get("Content-Range")) != offset:
                partial.unlink(missing_ok=True)
                raise _Transient(f"server sent an unexpected range ({r.headers.get('Content-Range')}); restarting")
            log.info("%s: resuming at byte %d", partial.stem, offset)
            mode = "ab"
        else:
            if offset:
                log.info("%s: server ignored the resume request; restarting", partial.stem)
            offset, mode = 0, "wb"
        length = r.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        written = offset
        with open(partial, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                            unit_divisor=1024, desc=partial.stem,
                                            mininterval=1.0) as bar:
            for chunk in r.iter_content(CHUNK_BYTES):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if length is not None and written < total:
        raise _Transient(f"connection closed after {written} of {total} bytes")


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", value or "")
    return int(match.group(1)) if match else None


def _content_range_total(value: str | None) -> int | None:
    match = re.search(r"/(\d+)$", value or "")
    return int(match.group(1)) if match else None
