"""Dataset names -> readers, and opening a ``NAME:ROOT[:SPLIT]`` spec in a label space.

Training, evaluation and benchmarks all open data through `open_dataset`, so a
spec string on the command line means the same thing everywhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeseg.data import readers
from edgeseg.data.align import DerivedPairs
from edgeseg.data.base import DatasetError, DatasetSpec, SegDataset, parse_spec
from edgeseg.labels import CITYSCAPES19, LabelSpace, cityscapes_to, get_label_space, remap_labels

Factory = Callable[..., SegDataset]


def _synthetic(class_name: str) -> Factory:
    """Import the synthetic sets lazily: they live in another module (and may be absent)."""

    def make(root: Any, split: str | None, **options: Any) -> SegDataset:
        try:
            module = importlib.import_module("edgeseg.data.synth.dataset")
        except ImportError as err:
            raise DatasetError(
                f"{root}: synthetic datasets need edgeseg.data.synth.dataset, which could not "
                f"be imported ({err})"
            ) from err
        cls = getattr(module, class_name)
        return cls(root, **options) if split is None else cls(root, split, **options)

    return make


DATASETS: dict[str, Factory] = {
    "cityscapes": readers.CityscapesDataset,
    "gta5": readers.GTA5Dataset,
    "synthia": readers.SynthiaDataset,
    "darkzurich": readers.DarkZurichDataset,
    "darkzurich_pairs": readers.DarkZurichPairs,
    "acdc": readers.ACDCDataset,
    "nighttime_driving": readers.NighttimeDrivingDataset,
    "bdd100k": readers.BDD100KDataset,
    "camvid": readers.CamVidDataset,
    "synthetic": _synthetic("SyntheticDataset"),
    "synthetic_pairs": _synthetic("SyntheticPairs"),
    "derived_pairs": DerivedPairs,  # an `edgeseg derive pairs` folder
}


class RelabelledDataset(SegDataset):
    """A reader whose labels are mapped into another label space on the fly."""

    def __init__(self, base: SegDataset, space: LabelSpace, mapping: dict[int, int]) -> None:
        # No SegDataset.__init__: ``base`` already checked its root.
        self.base = base
        self.root, self.split, self.layout = base.root, base.split, base.layout
        self.items = getattr(base, "items", [])
        self.label_space = space
        self.mapping = mapping

    def __getattr__(self, name: str) -> Any:
        # Reader-specific attributes (missing_labels, ...) stay reachable;
        # guard "base" so unpickling in loader workers cannot recurse.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def has_labels(self) -> bool:
        return self.base.has_labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        if sample.get("label") is not None:
            sample["label"] = remap_labels(sample["label"], self.mapping)
        return sample


def convert_labels(dataset: SegDataset, label_space: str | LabelSpace) -> SegDataset:
    """``dataset`` with labels in ``label_space``; only Cityscapes-19 labels convert."""
    name = label_space.name if isinstance(label_space, LabelSpace) else label_space
    try:
        target = get_label_space(name)
    except ValueError as err:
        raise DatasetError(str(err)) from None
    source = dataset.label_space
    if target.name == source.name:
        return dataset
    if source.name != CITYSCAPES19.name:
        raise DatasetError(
            f"{dataset.root}: cannot convert {source.name} labels to {target.name}; only "
            "cityscapes19 labels convert (to synthia16, synthia13, camvid11). Train and "
            f"evaluate in {source.name}, or in cityscapes19 and map predictions"
        )
    return RelabelledDataset(dataset, target, cityscapes_to(target))


def open_dataset(spec: str | DatasetSpec, label_space: str | LabelSpace | None = None,
                 **options: Any) -> SegDataset:
    """Open a dataset spec (``NAME:ROOT[:SPLIT]``); ``options`` go to the reader
    (e.g. ``load_reference=True`` for acdc)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    factory = DATASETS.get(spec.name)
    if factory is None:
        raise DatasetError(
            f"{spec}: unknown dataset {spec.name!r}; known datasets: {', '.join(DATASETS)}"
        )
    dataset = factory(spec.root, spec.split, **options)
    return convert_labels(dataset, label_space) if label_space else dataset


def spread_indices(n: int, count: int) -> list[int]:
    """``count`` indices evenly over ``range(n)``, first and last included (all when
    ``count`` is 0 or >= n): calibration, parity, precision and bench sets want frames
    from the whole sequence, not its first seconds. The one sampling rule in edgeseg."""
    if count <= 0 or count >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, count).round()})
