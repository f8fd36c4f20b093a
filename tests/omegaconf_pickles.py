"""OmegaConf-bearing torch pickles written as GLIGEN's trainer writes them, without omegaconf.

``config_dict(data)`` is ``vars(OmegaConf.create(data))`` built from classes named and pickled like
omegaconf 2.1's; ``save_parts`` torch-saves objects holding such configs. omegaconf itself is not installed
and must never be imported.
"""
from __future__ import annotations

import dataclasses
import sys
import typing
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from fake_modules import registered_modules


class _Node:
    """Like omegaconf's Node: pickles its __dict__ without the flags cache."""

    def __init__(self, parent, metadata, **fields):
        self.__dict__.update(_metadata=metadata, _parent=parent, _flags_cache=None, **fields)

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_flags_cache"]
        return state


@dataclasses.dataclass
class _Metadata:
    ref_type: typing.Any
    object_type: typing.Any
    optional: bool
    key: typing.Any
    flags: dict | None = None
    flags_root: bool = False
    resolver_cache: dict = dataclasses.field(default_factory=lambda: defaultdict(dict))


@dataclasses.dataclass
class _ContainerMetadata(_Metadata):
    key_type: typing.Any = None
    element_type: typing.Any = None


class _DictConfig(_Node):
    pass


class _ListConfig(_Node):
    pass


class _AnyNode(_Node):
    pass


_FAKES = {"omegaconf.base": {"Metadata": _Metadata, "ContainerMetadata": _ContainerMetadata},
          "omegaconf.dictconfig": {"DictConfig": _DictConfig},
          "omegaconf.listconfig": {"ListConfig": _ListConfig},
          "omegaconf.nodes": {"AnyNode": _AnyNode}}


@contextmanager
def fake_omegaconf():
    """Register the fake classes under omegaconf's module names while pickling, and only then."""
    assert "omegaconf" not in sys.modules
    for module, classes in _FAKES.items():
        for name, cls in classes.items():
            cls.__module__, cls.__qualname__ = module, name
    with registered_modules({"omegaconf": {}, **_FAKES}):
        yield


def _wrap(value, parent, key):
    """An OmegaConf node for ``value`` as OmegaConf.create builds it from yaml."""
    if isinstance(value, dict):
        node = _DictConfig(parent, _ContainerMetadata(typing.Any, dict, True, key, {}, key_type=typing.Any,
                                                      element_type=typing.Any), _content={})
        node._content.update({k: _wrap(v, node, k) for k, v in value.items()})
    elif isinstance(value, list):
        node = _ListConfig(parent, _ContainerMetadata(typing.Any, list, True, key, {}, key_type=int,
                                                      element_type=typing.Any), _content=[])
        node._content.extend(_wrap(v, node, i) for i, v in enumerate(value))
    else:
        node = _AnyNode(parent, _Metadata(typing.Any, None, True, key, {}), _val=value)
    return node


def config_dict(data: dict) -> dict:
    """``vars(config)`` of a DictConfig holding ``data``, as the trainer saves it."""
    return vars(_wrap(data, None, None))


def save_parts(folder: Path, parts: dict[str, object]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    with fake_omegaconf():
        for name, obj in parts.items():
            torch.save(obj, folder / name)
    return {name: (folder / name).read_bytes() for name in parts}
