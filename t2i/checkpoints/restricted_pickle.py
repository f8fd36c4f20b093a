"""Read torch checkpoints that hold pickled OmegaConf configs, without importing or running omegaconf.

``load_checkpoint`` calls ``torch.load`` with this module as its ``pickle_module``: the
unpickler resolves only an allowlist of globals (torch's tensor rebuild functions,
storage types, dtypes, ``torch.Size``, ``torch.device``, ``collections.OrderedDict``, a
few inert builtins and ``typing`` names). Every ``omegaconf.*`` class becomes an inert
``OmegaConfStub`` that records its constructor arguments and pickled state and does
nothing else; ``to_plain`` turns a config made of stubs into dicts, lists and values.
Any other global raises ``RefusedGlobalError`` before anything from the file runs.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import os
import pickle
import sys
import typing
import zipfile
from pathlib import Path
from typing import Any

import torch

_BUILTINS = ("set", "frozenset", "slice", "complex", "bytearray", "bytes", "str", "int", "float", "bool",
             "dict", "list", "tuple")  # the types are referenced by OmegaConf metadata (object_type)
_TYPING = ("Any", "Dict", "List", "Tuple", "Optional", "Union")  # OmegaConf metadata (ref_type, key_type)
_TORCH_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter")


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle that references a global outside the allowlist (it could run code)."""

    def __init__(self, message: str, global_name: str):
        super().__init__(message)
        self.global_name = global_name


class OmegaConfStub:
    """An ``omegaconf`` object as pickled: class name, constructor arguments and state; nothing runs."""

    omegaconf_class = "omegaconf"

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.args, self.state = args, None  # NEWOBJ passes the __reduce_ex__ arguments here
        return self

    def __init__(self, *args, **kwargs):  # REDUCE calls the class; the arguments are kept by __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.omegaconf_class} stub>"


_STUBS: dict[str, type[OmegaConfStub]] = {}


def _stub(qualified: str) -> type[OmegaConfStub]:
    if qualified not in _STUBS:
        name = qualified.rsplit(".", 1)[-1]
        _STUBS[qualified] = type(name, (OmegaConfStub,), {"omegaconf_class": qualified, "__module__": __name__})
    return _STUBS[qualified]


def _plain_defaultdict(default_factory: Any = None) -> dict:
    """``collections.defaultdict`` (OmegaConf's resolver cache) as a plain dict; the factory is dropped."""
    return {}


def _torch_global(name: str) -> Any:
    value = vars(torch).get(name)  # no getattr: torch's module __getattr__ imports submodules
    if name in ("Size", "device") or isinstance(value, torch.dtype):
        return value
    if name.endswith("Storage") and isinstance(value, type):
        return value
    return None


def py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 3 names of a global: protocol-2 pickles (torch.save's default) write Python 2 names."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[module, name]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def allowed_global(module: str, name: str) -> Any:
    """The object pickle may use for ``module.name`` (Python 3 names), or ``None`` if it is refused."""
    if module == "omegaconf" or module.startswith("omegaconf."):
        return _stub(f"{module}.{name}")
    if module == "torch._utils" and name in _TORCH_REBUILD:
        return getattr(torch._utils, name, None)
    if module == "torch":
        return _torch_global(name)
    if module == "collections":
        return {"OrderedDict": collections.OrderedDict, "defaultdict": _plain_defaultdict}.get(name)
    if module == "builtins" and name in _BUILTINS:
        return getattr(builtins, name)
    if module == "typing" and name in _TYPING:
        return getattr(typing, name)
    return None


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals through ``allowed_global`` only."""

    def find_class(self, module: str, name: str) -> Any:
        module, name = py3_name(module, name)
        found = allowed_global(module, name)
        if found is None:
            qualified = f"{module}.{name}"
            raise RefusedGlobalError(f"refused global {qualified} (only tensors, containers and OmegaConf "
                                     "configs are unpickled; nothing from the file is executed)", qualified)
        return found


def load(file, **kwargs) -> Any:
    """``pickle.load`` with the restricted ``Unpickler`` (torch uses it for legacy-format headers)."""
    return Unpickler(file, **kwargs).load()


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                    label: str | None = None) -> Any:
    """``torch.load`` a file through the restricted unpickler (zip files are memory-mapped).

    Raises ``RefusedGlobalError`` naming the file (as ``label``, default its path) and the global.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, pickle_module=sys.modules[__name__],
                          weights_only=False, mmap=zipfile.is_zipfile(path))
    except RefusedGlobalError as e:
        raise RefusedGlobalError(f"{label or path}: {e}", e.global_name) from None


def to_plain(obj: Any) -> Any:
    """Dicts, lists and values from a pickled OmegaConf config (stubs, or a ``vars(DictConfig)`` dict).

    A container's state holds ``_content`` (a dict or list of nodes, or a string such as
    ``???`` or an interpolation); a value node's state holds ``_val``. Metadata and parent
    links are ignored.
    """
    if isinstance(obj, OmegaConfStub):
        state = obj.state if isinstance(obj.state, dict) else {}
        for field in ("_content", "_val"):
            if field in state:
                return to_plain(state[field])
        return to_plain(obj.args[0]) if len(obj.args) == 1 else repr(obj)  # an enum member: its value
    if isinstance(obj, dict):
        if "_content" in obj and "_metadata" in obj:
            return to_plain(obj["_content"])
        return {_plain_key(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return repr(obj)


def _plain_key(key: Any) -> Any:
    plain = to_plain(key)
    return plain if plain is None or isinstance(plain, (str, int, float, bool)) else str(plain)
