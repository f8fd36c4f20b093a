"""Read the weights out of a StyleGAN2-ADA / LAFITE ``network-snapshot-*.pkl`` without running its code.

A snapshot is a plain pickle of ``{training_set_kwargs, args, G, D, G_ema, augment_pipe}``.
The networks are ``@persistence.persistent_class`` modules: each pickles as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type: 'class', version, module_src, class_name, state}``, and the original loader
``exec``s ``module_src``. Here that global is replaced by a recorder that keeps
``class_name`` and ``state`` (the module's ``__dict__``: ``_parameters``, ``_buffers``,
``_modules``, ...) and never looks at ``module_src``. Tensors come from torch's rebuild
functions; their storages are nested ``torch.save`` bytes, read with ``weights_only=True``.
Every other global is refused.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from t2i.checkpoints.safe_load import UnsafeCheckpointError


class UnsafePickleError(UnsafeCheckpointError):
    """A snapshot pickle that references a global outside the allowed set."""


@dataclass
class PersistentObject:
    """What ``_reconstruct_persistent_obj`` would have built, as data: the class name and its state."""

    class_name: str
    state: dict = field(repr=False)


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict subclass used for kwargs)."""


def _record_persistent(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("malformed persistent object (expected meta with type 'class' and a class_name)")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"persistent {meta['class_name']}: state is {type(state).__name__}, not a dict")
    return PersistentObject(meta["class_name"], state)


def _load_storage(data: bytes):
    """``torch.storage._load_from_bytes`` with the weights-only unpickler."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))  # how torch's weights-only unpickler names a refused global
        if refused:
            raise UnsafePickleError(f"a tensor storage refers to global {refused[1]} (refused)") from None
        raise


_NUMPY_DTYPE = re.compile(r"[<>=|]?[biufc]\d{1,2}|\?")


def _np_dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    if not isinstance(spec, str) or not _NUMPY_DTYPE.fullmatch(spec):
        raise UnsafePickleError(f"numpy dtype {spec!r} refused (only numeric dtypes are allowed)")
    return np.dtype(spec, align=bool(align), copy=True)  # a copy: pickle's BUILD then sets its state


def _np_scalar(dtype: Any, data: Any = None):
    """A numeric numpy scalar, returned as the Python number."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise UnsafePickleError(f"numpy scalar of {dtype!r} refused (only numeric scalars are allowed)")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


def _latin1(text: Any, encoding: str) -> bytes:
    """``_codecs.encode``, as protocol-2 pickles write ``bytes``; latin1 only."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r} refused (only latin1, as pickle writes bytes)")
    return text.encode("latin1")


ALLOWED_GLOBALS: dict[tuple[str, str], Callable | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class _SnapshotUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # protocol 2 writes Python 2 names
        try:
            return ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise UnsafePickleError(f"{self.path}: refused global {module}.{name} (a snapshot may only hold "
                                    "tensors, containers and persistent modules; nothing is executed)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.path}: refused persistent id {pid!r} (not a plain pickle snapshot)")


def read_snapshot(path: str | os.PathLike, network: str = "G_ema") -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, info)`` of one network of a snapshot pickle, never running code from it.

    ``state_dict`` has ``nn.Module.state_dict()`` names and order (parameters, persistent
    buffers, then submodules). ``info``: ``network``, ``class_name``, ``networks`` (class name
    of every network in the file), the plain-data ``init_args``/``init_kwargs`` of the network,
    ``training_set_kwargs`` and ``args`` (``None`` when absent), and ``resolution`` and ``f_dim``
    where the file records them. Raises ``UnsafePickleError`` for disallowed content.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _SnapshotUnpickler(f, path).load()
    except UnsafePickleError as e:
        if str(path) in str(e):
            raise
        raise UnsafePickleError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, RuntimeError) as e:
        raise pickle.UnpicklingError(f"{path}: not a readable snapshot pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a {type(data).__name__}, not a snapshot dict")
    networks = {k: v.class_name for k, v in data.items() if isinstance(v, PersistentObject)}
    if network not in networks:
        raise KeyError(f"{path}: no network {network!r} (networks: {', '.join(networks) or 'none'})")
    module = data[network]
    state_dict: dict[str, torch.Tensor] = {}
    _flatten(module, "", state_dict, path)
    init_kwargs = _data(module.state.get("_init_kwargs"))
    train_kwargs, args = _data(data.get("training_set_kwargs")), _data(data.get("args"))
    info = {
        "network": network, "class_name": module.class_name, "networks": networks,
        "init_args": _data(module.state.get("_init_args")), "init_kwargs": init_kwargs,
        "training_set_kwargs": train_kwargs, "args": args,
        "resolution": _first(train_kwargs, ("resolution",), init_kwargs, ("img_resolution",)),
        "f_dim": _first(args, ("f_dim",), init_kwargs, ("synthesis_kwargs", "f_dim")),
    }
    return state_dict, info


def _flatten(obj: PersistentObject, prefix: str, out: dict, path: Path) -> None:
    if not isinstance(obj, PersistentObject):
        where = prefix.rstrip(".") or "network"
        raise ValueError(f"{path}: {where} is a {type(obj).__name__}, not a persistent module")
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    tensors = [*(state.get("_parameters") or {}).items(),
               *((k, v) for k, v in (state.get("_buffers") or {}).items() if k not in skip)]
    for name, value in tensors:
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: {prefix}{name} is a {type(value).__name__}, not a tensor")
        out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _flatten(child, f"{prefix}{name}.", out, path)


_DROP = object()


def _plain(value: Any) -> Any:
    """JSON-like data only: containers of str/int/float/bool/None (anything else is dropped)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        items = ((str(k), _plain(v)) for k, v in value.items())
        return {k: v for k, v in items if v is not _DROP}
    if isinstance(value, (list, tuple)):
        return [v for v in map(_plain, value) if v is not _DROP]
    return _DROP


def _data(value: Any) -> Any:
    """:func:`_plain`, with ``None`` for a value that is not plain data at all."""
    value = _plain(value)
    return None if value is _DROP else value


def _first(*sources) -> Any:
    """The first value found along ``(mapping, key path)`` pairs given flat: ``m1, keys1, m2, keys2``."""
    for mapping, keys in zip(sources[::2], sources[1::2]):
        for key in keys:
            mapping = mapping.get(key) if isinstance(mapping, dict) else None
        if mapping is not None:
            return mapping
    return None
