"""Metrics: the Shapes detector and scorer, FID/KID/IS feature extractors, the evaluate stage."""
