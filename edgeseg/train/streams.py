"""The trainer's data streams, built from the recipe's data block and the method's
declaration of which streams it reads and which of them carry labels."""

from __future__ import annotations

from typing import Any

from edgeseg.config import ConfigError, Recipe
from edgeseg.data import open_dataset
from edgeseg.data.transforms import TrainTransform
from edgeseg.labels import LabelSpace
from edgeseg.train.distributed import DistInfo
from edgeseg.train.loader import AugmentedDataset, MultiStream, Stream
from edgeseg.train.methods.base import Method


class Unlabelled:
    """View of a reader with labels removed: the target domain is unlabelled by contract."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.root = reader.root
        self.label_space = reader.label_space

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.reader[index])
        sample["label"] = None
        return sample


def build_streams(recipe: Recipe, method: Method, label_space: LabelSpace,
                  dist: DistInfo) -> MultiStream:
    d = recipe.data
    specs = {"source": d.source, "target": d.target, "pairs": d.pairs}
    transform = TrainTransform(crop=d.crop, scale_range=d.scale_range, flip=d.flip,
                               color_jitter=d.color_jitter, resize=d.resize)
    streams = {}
    for i, name in enumerate(method.streams):
        spec = specs[name]
        if spec is None:
            raise ConfigError(f"method {recipe.method.name} needs data.{name}")
        reader = open_dataset(spec, label_space.name if name == "source" else None)
        if name == "target":
            reader = Unlabelled(reader)  # target labels never reach a loss
        if name in ("source", "pairs"):
            reader.require_labels(f"the {name} stream of method {recipe.method.name}")
        dataset = AugmentedDataset(reader, transform, d.mean, d.std, recipe.seed + 1000 * i)
        streams[name] = Stream(dataset, d.batch_size, d.workers, dist.rank,
                               dist.world_size, recipe.seed + 1000 * i)
    return MultiStream(streams)
