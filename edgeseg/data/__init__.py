"""Datasets: the reader contract, official-layout readers and spec strings."""

from edgeseg.data.base import DatasetError, DatasetSpec, SegDataset, parse_spec
from edgeseg.data.registry import DATASETS, convert_labels, open_dataset, spread_indices

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "SegDataset",
    "convert_labels",
    "open_dataset",
    "parse_spec",
    "spread_indices",
]
