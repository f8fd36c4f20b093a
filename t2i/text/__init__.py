"""Frozen text encoders that turn captions into pooled feature vectors."""
