"""t2i: reproduce text-to-image research systems end to end with one Snakemake workflow."""

__version__ = "0.1.0"
