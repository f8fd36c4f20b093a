"""Network definitions, one model per module (import the module you need, e.g. ``t2i.models.jit``)."""
from __future__ import annotations


def public_config(model) -> dict:
    """A diffusers model's config without its private ``_*`` bookkeeping keys.

    ``_use_default_values`` is built from a set, so its order changes from one Python process
    to the next; what identifies a network (state fingerprints, saved configs) must not.
    """
    return {k: v for k, v in model.config.items() if not k.startswith("_")}
