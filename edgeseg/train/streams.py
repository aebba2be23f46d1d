"""The trainer's data streams, built from the recipe's data block and the method's
declaration of which streams it reads and which of them carry labels.

Each stream's settings are ``data.streams.NAME`` over the global ``data.*`` keys
(`DataConfig.stream`). Labels follow the method, never the recipe: a stream in
``method.labelled_streams`` must be labelled and gets its labels in the recipe's label
space; every other stream (target, pairs, ...) has its labels removed before any
batch is made, so they cannot reach a loss. A stream with ``pseudo_labels: DIR``
takes ``label`` and ``confidence`` from that ``edgeseg derive pseudo-label`` folder
instead (a model made them from the images alone). Stream ``i`` of
``method.streams`` is seeded ``recipe.seed + 1000 * i``.

A pairs stream with ``align: homography`` gets each pair's ``homography`` (night ->
day pixel coordinates, `edgeseg.data.align`), from a JSON cache the main process
computes before any loader worker starts (``align_cache``, by default
``<output_dir>/alignment-<stream>.json``); the other ranks wait for it and read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from edgeseg.config import ConfigError, DataConfig, Recipe, StreamConfig
from edgeseg.data import open_dataset
from edgeseg.data.align import AlignedPairs, AlignSettings, compute_alignments, load_alignments
from edgeseg.data.transforms import TrainTransform
from edgeseg.labels import LabelSpace
from edgeseg.train.derive import normalise_spec, open_pseudo_labels
from edgeseg.train.distributed import DistInfo, barrier
from edgeseg.train.loader import AugmentedDataset, MultiStream, Stream
from edgeseg.train.methods.base import Method


class Unlabelled:
    """View of a reader with labels removed: unlabelled streams are unlabelled by contract."""

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


def check_stream_names(recipe: Recipe, method: Method) -> None:
    """``data.streams`` may only name streams the method reads (a typo would silently
    configure nothing)."""
    unknown = sorted(set(recipe.data.streams) - set(method.streams))
    if unknown:
        raise ConfigError(
            f"data.streams.{unknown[0]}: method {recipe.method.name} has no stream "
            f"{unknown[0]!r}; its streams are {', '.join(method.streams)}")


def open_stream_reader(recipe: Recipe, method: Method, name: str, cfg: StreamConfig,
                       label_space: LabelSpace) -> tuple[Any, dict[str, Any]]:
    """The reader of stream ``name`` with its labels as the method may see them, and
    its provenance."""
    spec = cfg.data
    if spec is None:
        shorthand = f"data.{name} or " if name in ("source", "target", "pairs") else ""
        raise ConfigError(f"method {recipe.method.name} needs {shorthand}data.streams.{name}.data "
                          "(a dataset spec NAME:ROOT[:SPLIT])")
    provenance: dict[str, Any] = {"data": spec, "pseudo_labels": None, "checkpoint": None,
                                  "checkpoint_sha256": None}
    labelled = name in method.labelled_streams
    if cfg.pseudo_labels:
        reader, manifest = open_pseudo_labels(
            cfg.pseudo_labels, open_dataset(spec), spec, label_space.name,
            f"data.streams.{name}.pseudo_labels")  # replaces the dataset's own labels
        provenance.update(pseudo_labels=cfg.pseudo_labels, checkpoint=manifest["checkpoint"],
                          checkpoint_sha256=manifest["checkpoint_sha256"],
                          threshold=manifest.get("threshold"))
        return reader, provenance
    if labelled:
        reader = open_dataset(spec, label_space.name)
        reader.require_labels(f"the {name} stream of method {recipe.method.name}")
        return reader, provenance
    return Unlabelled(open_dataset(spec)), provenance  # labels never reach a loss


def stream_config(d: DataConfig, name: str) -> StreamConfig:
    """`DataConfig.stream` with the stream's own alignment keys (they have no global
    ``data.*`` counterpart)."""
    own = d.streams.get(name, StreamConfig())
    return dataclasses.replace(d.stream(name), align=own.align,
                               align_features=own.align_features, align_cache=own.align_cache)


def alignment_cache(recipe: Recipe, name: str, cfg: StreamConfig) -> Path:
    """Where stream ``name`` keeps its alignments: ``align_cache``, or the run folder (the
    datasets may be read-only; the run folder is checked writable before this)."""
    if cfg.align_cache:
        return Path(cfg.align_cache)
    return Path(recipe.output_dir.format(name=recipe.name)) / f"alignment-{name}.json"


def align_stream(reader: Any, recipe: Recipe, name: str, cfg: StreamConfig,
                 dist: DistInfo) -> tuple[AlignedPairs, dict[str, Any]]:
    """``reader`` with each pair's homography: rank 0 computes (or reuses) the cache,
    the others wait and read it. Returns the view and its provenance entry."""
    key = f"data.streams.{name}.align"
    if len(reader) == 0 or "night" not in reader[0]:
        raise ConfigError(f"{key}: homography needs a day/night pairs dataset (samples with "
                          f"'night'), {cfg.data} has none; use darkzurich_pairs, "
                          "synthetic_pairs or derived_pairs, or remove the key")
    path = alignment_cache(recipe, name, cfg)
    settings = AlignSettings(features=cfg.align_features or "orb")
    assert cfg.data is not None
    data = normalise_spec(cfg.data)
    alignments = (compute_alignments(reader, path, settings, data=data, progress=True)
                  if dist.is_main else None)
    barrier(dist)
    if alignments is None:
        alignments = load_alignments(path, settings, data)
    ok = sum(a.ok for a in alignments.values())
    return AlignedPairs(reader, alignments, path), {
        "method": "homography", "features": settings.features, "cache": str(path),
        "ok": ok, "pairs": len(alignments)}


def build_streams(recipe: Recipe, method: Method, label_space: LabelSpace,
                  dist: DistInfo) -> MultiStream:
    d = recipe.data
    check_stream_names(recipe, method)
    crop_box = method.wants_crop_box
    streams = {}
    provenance = {}
    for i, name in enumerate(method.streams):
        cfg = stream_config(d, name)
        reader, provenance[name] = open_stream_reader(recipe, method, name, cfg, label_space)
        if cfg.align == "homography":
            reader, provenance[name]["alignment"] = align_stream(reader, recipe, name, cfg, dist)
        transform = TrainTransform(crop=cfg.crop, scale_range=cfg.scale_range, flip=cfg.flip,
                                   color_jitter=cfg.color_jitter, resize=cfg.resize,
                                   low_light=cfg.low_light)
        dataset = AugmentedDataset(reader, transform, d.mean, d.std, recipe.seed + 1000 * i,
                                   crop_box=crop_box)
        streams[name] = Stream(dataset, cfg.batch_size, d.workers, dist.rank, dist.world_size,
                               recipe.seed + 1000 * i, name=name)
    return MultiStream(streams, provenance)
