"""Load checkpoints without running code from them unless the config says the source is trusted.

``.safetensors`` files hold only tensors. Pickle-based files (``.pt``, ``.pth``,
``.bin``, ``.ckpt``) are read with ``torch.load(weights_only=True)``, which refuses
arbitrary objects; a file that needs more raises ``UnsafeCheckpointError`` unless its
asset sets ``trust_pickle: true``.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
# How torch's weights-only unpickler words a refused object (as opposed to a damaged file).
_REFUSED_OBJECT = re.compile(r"GLOBAL \S+|allowlisted")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that can only be loaded by unpickling arbitrary objects."""


def load_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False,
                    map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file (whatever top-level object it holds, usually a dict).

    ``trust_pickle`` allows full unpickling (it can execute code from the file).
    ``mmap`` maps tensor storage lazily instead of reading it (zip-format torch files).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path, device=str(map_location))
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unknown checkpoint format (expected .safetensors or {', '.join(PICKLE_SUFFIXES)})")
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            reason = _reason(e)
            if _REFUSED_OBJECT.search(reason):
                raise UnsafeCheckpointError(
                    f"{path}: loading needs full unpickling, which can run code from the file ({reason}); "
                    "if you trust its source, set `trust_pickle: true` for this asset in the config") from None
            raise pickle.UnpicklingError(f"{path}: not a readable torch checkpoint ({reason})") from None
    log.warning("%s: unpickling with weights_only=False (trust_pickle is set)", path)
    return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)


def _reason(error: Exception) -> str:
    """The unpickler's own complaint, without torch's advice around it."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1].strip()
    return text.splitlines()[0].split(" Please use")[0].strip() if text else type(error).__name__


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``given`` from loading strictly where ``expected`` (a module's ``state_dict()``) is: missing,
    unexpected and differently shaped tensors, three of each named; None when it fits."""
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    parts = [f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''}" for label, keys in
             (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong)) if keys]
    return "; ".join(parts) or None

