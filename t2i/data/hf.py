"""Hugging Face Hub snapshots into a plain folder (``huggingface_hub.snapshot_download``).

The token comes from the environment only (``HF_TOKEN``); the endpoint from
``HF_ENDPOINT`` at call time. When the Hub cannot be reached, files placed in ``dest``
by hand are used as they are; if there are none the error says what to fetch and where.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                    RepositoryNotFoundError, RevisionNotFoundError)

from t2i.utils.secrets import hf_token, redact_text

log = logging.getLogger(__name__)


class HubDownloadError(RuntimeError):
    """A Hub snapshot that could not be fetched; the message says what to do."""


def snapshot(repo_id: str, dest: str | os.PathLike, *, revision: str | None = None, repo_type: str = "model",
             allow_patterns: list[str] | str | None = None, token: str | None = None) -> Path:
    """Download ``repo_id`` at ``revision`` into ``dest`` (resumable; metadata in ``dest/.cache``)."""
    dest = Path(dest)
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    where = f"{repo_type} '{repo_id}' (revision {revision or 'main'}) from {endpoint}"
    log.info("fetching %s into %s", where, dest)
    try:
        path = snapshot_download(
            repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns,
            local_dir=dest, cache_dir=dest / ".cache" / "huggingface" / "hub", endpoint=endpoint,
            token=token or hf_token() or False,  # never a token file from the home directory
        )
    except LocalEntryNotFoundError as e:  # offline, unreachable, or a partial snapshot
        cli = f"hf download {repo_id} --repo-type {repo_type} --revision {revision or 'main'} --local-dir DIR"
        raise HubDownloadError(
            f"cannot fetch {where}: {_first_line(e)}. Fetch it where the Hub is reachable (`{cli}`) "
            f"and place the files in {dest}; they are used as they are when the Hub is unreachable") from None
    except RevisionNotFoundError:
        raise HubDownloadError(f"cannot fetch {where}: the revision does not exist") from None
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise HubDownloadError(
            f"cannot fetch {where}: repository not found or not accessible ({type(e).__name__}); for a private "
            "or gated repo accept its licence on the Hub and set HF_TOKEN in the environment") from None
    except HfHubHTTPError as e:
        raise HubDownloadError(f"cannot fetch {where}: {_first_line(e)}") from None
    return Path(path)


def _first_line(error: Exception) -> str:
    return redact_text(str(error).strip().splitlines()[0]) if str(error).strip() else type(error).__name__
