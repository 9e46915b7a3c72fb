"""fersynth library code: data, training, rendering, quality checks. Runs without Prefect."""

__version__ = "0.1.0"
