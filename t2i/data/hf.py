"""Hugging Face Hub downloads into a plain folder: whole snapshots (``snapshot``) or single files (``download_file``).

The token comes from the environment only (``HF_TOKEN``); the endpoint from
``HF_ENDPOINT`` at call time. When the Hub cannot be reached, files placed in ``dest``
by hand are used as they are; if there are none the error says what to fetch and where.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                    RepositoryNotFoundError, RevisionNotFoundError)

from t2i.utils.secrets import hf_token, redact_text

log = logging.getLogger(__name__)


class HubDownloadError(RuntimeError):
    """A Hub snapshot or file that could not be fetched; the message says what to do."""


def snapshot(repo_id: str, dest: str | os.PathLike, *, revision: str | None = None, repo_type: str = "model",
             allow_patterns: list[str] | str | None = None, token: str | None = None) -> Path:
    """Download ``repo_id`` at ``revision`` into ``dest`` (resumable; metadata in ``dest/.cache``)."""
    return _fetch(snapshot_download, repo_id, None, dest, revision=revision, repo_type=repo_type, token=token,
                  allow_patterns=allow_patterns)


def download_file(repo_id: str, filename: str, dest: str | os.PathLike, *, revision: str | None = None,
                  repo_type: str = "model", token: str | None = None) -> Path:
    """Download one file of ``repo_id`` to ``dest/filename`` (resumable; metadata in ``dest/.cache``)."""
    return _fetch(hf_hub_download, repo_id, filename, dest, revision=revision, repo_type=repo_type, token=token)


def published_sha256(repo_id: str, filename: str, *, revision: str | None = None, repo_type: str = "model",
                     token: str | None = None) -> str:
    """The SHA-256 the Hub publishes for an LFS file of ``repo_id`` (its etag), read without downloading it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint, where = _location(repo_id, filename, revision, repo_type)
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    try:
        etag = get_hf_file_metadata(url, token=token or hf_token() or False, endpoint=endpoint).etag or ""
    except Exception as e:  # noqa: BLE001 - offline, 404, gated: one line, and what to do instead
        raise HubDownloadError(f"cannot read the published SHA-256 of {where}: {_first_line(e)}; "
                               "configure the file's sha256") from None
    if not re.fullmatch(r"[0-9a-f]{64}", etag.strip('"')):
        raise HubDownloadError(f"the Hub publishes no SHA-256 for {where} (not an LFS file): configure its sha256")
    return etag.strip('"')


def _location(repo_id: str, filename: str | None, revision: str | None, repo_type: str) -> tuple[str, str]:
    """The endpoint (``HF_ENDPOINT`` or the Hub's) and how messages name the repo (or one file of it) there."""
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    what = f"{filename} of " if filename else ""
    return endpoint, f"{what}{repo_type} '{repo_id}' (revision {revision or 'main'}) from {endpoint}"


def _fetch(download, repo_id: str, filename: str | None, dest: str | os.PathLike, *, revision: str | None,
           repo_type: str, token: str | None, **kwargs) -> Path:
    """``download`` (``snapshot_download``, or ``hf_hub_download`` of ``filename``) into ``dest``, its errors as
    one :class:`HubDownloadError` naming what and where, and the ``hf download`` command that does the same."""
    dest = Path(dest)
    endpoint, where = _location(repo_id, filename, revision, repo_type)
    cli = (f"hf download {repo_id}{' ' + filename if filename else ''} --repo-type {repo_type} "
           f"--revision {revision or 'main'} --local-dir DIR")
    log.info("fetching %s into %s", where, dest)
    args = (repo_id, filename) if filename else (repo_id,)
    with _hub_errors(where, cli, dest):
        path = download(*args, repo_type=repo_type, revision=revision, local_dir=dest,
                        cache_dir=dest / ".cache" / "huggingface" / "hub", endpoint=endpoint,
                        token=token or hf_token() or False,  # never a token file from the home directory
                        **kwargs)
    return Path(path)


@contextmanager
def _hub_errors(where: str, cli: str, dest: Path) -> Iterator[None]:
    """Turn huggingface_hub's errors into one ``HubDownloadError`` line saying what to do."""
    try:
        yield
    except LocalEntryNotFoundError as e:  # offline, unreachable, or a partial snapshot
        raise HubDownloadError(
            f"cannot fetch {where}: {_first_line(e)}. Fetch it where the Hub is reachable (`{cli}`) "
            f"and place the files in {dest}; they are used as they are when the Hub is unreachable") from None
    except RevisionNotFoundError:
        raise HubDownloadError(f"cannot fetch {where}: the revision does not exist") from None
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise HubDownloadError(
            f"cannot fetch {where}: repository not found or not accessible ({type(e).__name__}); for a private "
            "or gated repo accept its licence on the Hub and set HF_TOKEN in the environment") from None
    except EntryNotFoundError:
        raise HubDownloadError(f"cannot fetch {where}: no such file in the repository (HTTP 404)") from None
    except HfHubHTTPError as e:
        raise HubDownloadError(f"cannot fetch {where}: {_first_line(e)}") from None


def _first_line(error: Exception) -> str:
    return redact_text(str(error).strip().splitlines()[0]) if str(error).strip() else type(error).__name__
