"""Small shared helpers: atomic writes, provenance, secret redaction."""
