"""The cross-experiment report: ``build_report(experiments, out_dir)`` writes index.html and metrics.csv."""
from t2i.report.html import build_report

__all__ = ["build_report"]
