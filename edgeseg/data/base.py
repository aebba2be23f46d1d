"""The dataset contract every reader follows, and dataset spec strings.

A reader is a sequence of samples: ``dataset[i]`` returns a dict with
``image`` (H, W, 3 uint8 **RGB**), ``label`` (H, W uint8 class ids in
``dataset.label_space``, 255 = ignore, or ``None`` for unlabelled data) and
``name`` (a stable id, e.g. ``seq_000123``). Readers are torch-free so the
runtime and benchmarks can use them on a vehicle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.labels import LabelSpace


class DatasetError(EdgesegError):
    """A dataset root, file or label that does not match the expected layout."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: Path
    split: str | None

    def __str__(self) -> str:
        return f"{self.name}:{self.root}" + (f":{self.split}" if self.split else "")


def parse_spec(spec: str) -> DatasetSpec:
    """``NAME:ROOT[:SPLIT]`` -> DatasetSpec (ROOT may contain no colon)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise DatasetError(
            f"dataset spec {spec!r}: expected NAME:ROOT[:SPLIT], "
            "e.g. camvid:../shared/data/camvid:day_val"
        )
    return DatasetSpec(parts[0].lower(), Path(parts[1]), parts[2] if len(parts) == 3 and parts[2] else None)


class SegDataset:
    """Base class: subclasses fill ``self.items`` and implement ``load``."""

    label_space: LabelSpace
    #: human-readable description of the on-disk layout, used in error messages
    layout: str = ""

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetError(
                f"{self.root}: dataset root does not exist. Expected layout:\n{self.layout}"
            )
        self.items: list[Any] = []

    @property
    def has_labels(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self.items) <= index < len(self.items):
            raise IndexError(index)
        return self.load(self.items[index])

    def load(self, item: Any) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def require_labels(self, purpose: str) -> None:
        """Fail at open, naming the folder, when a split that must be labelled is not (or is
        only partly): otherwise training fails later at the first batch without a label."""
        paths = [p for p in (getattr(it, "label", None) for it in self.items) if p is not None]
        absent = [p for p in paths if not Path(p).is_file()]
        where = f"split {self.split!r} of {self.root}" if self.split else str(self.root)
        if not self.has_labels or not paths:
            folder = Path(absent[0]).parent if absent else self.root
            raise DatasetError(
                f"{folder}: no label files for {where} ({len(absent)} expected, e.g. "
                f"{absent[0] if absent else 'none listed'}); {purpose} needs labels: add "
                "them or use a labelled split")
        if absent:
            raise DatasetError(
                f"{Path(absent[0]).parent}: {len(absent)} of {len(paths)} label files of "
                f"{where} are missing (e.g. {absent[0]}); {purpose} needs every label: add "
                "them or list only labelled images in the split")

    def missing(self, path: Path, what: str) -> DatasetError:
        return DatasetError(f"{path}: {what} not found. Expected layout:\n{self.layout}")


def read_image(path: Path) -> np.ndarray:
    """Read an 8-bit colour image as RGB, with an error naming the file."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: missing or not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: Path, unchanged: bool = False) -> np.ndarray:
    """Read a single-channel label png (``unchanged`` keeps 16-bit / multi-channel).

    A colour image is refused rather than converted to grey: its grey values
    would pass as class ids and train on wrong labels. Grey stored as RGB(A)
    (equal channels) is accepted.
    """
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DatasetError(f"{path}: missing or not a readable label image")
    if unchanged or lab.ndim == 2:
        return lab
    colour = lab[..., :3]
    if not ((colour == colour[..., :1]).all()):
        raise DatasetError(
            f"{path}: expected a single-channel label id map, got a {lab.shape[2]}-channel "
            "colour image; write class ids as a 1-channel (greyscale) png")
    return np.ascontiguousarray(colour[..., 0])
