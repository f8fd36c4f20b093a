"""Network definitions, one model per module (import the module you need, e.g. ``t2i.models.jit``)."""
