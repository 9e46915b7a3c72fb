"""Downstream use of generated datasets: torch datasets, exports, and mixing with real data."""

from pipeline.downstream.dataset import META_KEYS, LabelledDataset, ManifestDataset, apply_filters
from pipeline.downstream.export import export_hf, export_imagefolder

__all__ = ["META_KEYS", "LabelledDataset", "ManifestDataset", "apply_filters", "export_hf", "export_imagefolder"]
