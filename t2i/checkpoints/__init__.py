"""Pretrained assets: assembly (``assemble``), hashing (``hashing``) and safe loading (``safe_load``)."""
