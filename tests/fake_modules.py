"""Stand-in modules registered under another project's module names, so objects pickle as that project's."""
from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def registered_modules(members: dict[str, dict[str, object]]) -> Iterator[None]:
    """Register a module per name in ``members`` holding its attributes, for the ``with`` block only."""
    modules = {}
    for name, attributes in members.items():
        modules[name] = types.ModuleType(name)
        for attribute, value in attributes.items():
            setattr(modules[name], attribute, value)
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            del sys.modules[name]
