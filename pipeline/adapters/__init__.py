"""Real-dataset adapters: user datasets in common layouts -> one labels table + aligned PNG crops."""

from pipeline.adapters.base import ImportOptions, ImportSummary, Item, Listing
from pipeline.adapters.core import REPORT_FILE, UnknownLabelError, import_dataset
from pipeline.adapters.layouts import LAYOUTS

__all__ = [
    "LAYOUTS",
    "REPORT_FILE",
    "ImportOptions",
    "ImportSummary",
    "Item",
    "Listing",
    "UnknownLabelError",
    "import_dataset",
]
