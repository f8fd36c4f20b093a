"""Datasets: downloads, format converters, the Shapes-T2I generator and the caption-dir dataset."""
