"""What every official-layout reader shares: items, file pairing and label decoding.

Each reader only describes *where* its files are (a `PairRule` or a list file);
pairing images with labels, deciding whether a split is labelled, reading and
mapping label ids, and the error messages all live here so the datasets behave
the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.data.base import DatasetError, SegDataset, read_image, read_label
from edgeseg.labels import apply_lut, build_lut

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3


@dataclass(frozen=True)
class Item:
    """One sample on disk: ``extras`` holds further images (e.g. ``reference``, ``night``)."""

    name: str
    image: Path
    label: Path | None = None
    extras: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class PairRule:
    """How an image file maps to its label (and extra) files.

    An image ``image_root/<rel><image_suffix>`` pairs with the label
    ``label_root/<rel><label_suffix>``, where ``<rel>`` is the relative path
    without the suffix (e.g. ``aachen/aachen_000000_000019``). ``extras`` map a
    sample key to ``(root, suffix)`` the same way (ACDC's ``<split>_ref`` tree
    mirrors the image tree, so a reference image is just another root).
    """

    image_root: Path
    image_suffix: str
    label_root: Path | None = None
    label_suffix: str = ""
    extras: dict[str, tuple[Path, str]] = field(default_factory=dict)

    def item(self, rel: str) -> Item:
        """The item for a relative stem like ``seq/frame`` (list-file entries)."""
        rel = rel.strip().strip("/")
        label = self.label_root / f"{rel}{self.label_suffix}" if self.label_root else None
        extras = {key: root / f"{rel}{suffix}" for key, (root, suffix) in self.extras.items()}
        return Item(Path(rel).name, self.image_root / f"{rel}{self.image_suffix}", label, extras)

    def scan(self) -> list[Item]:
        """All images under ``image_root`` (any depth), sorted, each with its label path."""
        items = []
        for path in sorted(self.image_root.rglob(f"*{self.image_suffix}")):
            rel = path.relative_to(self.image_root).as_posix()[: -len(self.image_suffix)]
            items.append(self.item(rel))
        return items


def strip_suffixes(text: str, suffixes: Iterable[str]) -> str:
    """``text`` without the first matching suffix (list files vary in what they include)."""
    for suffix in suffixes:
        if suffix and text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def read_palette_aware(path: Path, unchanged: bool = False) -> np.ndarray:
    """Read a label png, returning palette *indices* for palette pngs.

    OpenCV always expands palette pngs to colours, so GTA5's palette label
    files would silently become grey values; Pillow keeps the indices.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        raise DatasetError(f"{path}: missing or not a readable label image") from None
    if head[:8] == _PNG_SIGNATURE and len(head) == 26 and head[25] == _PNG_PALETTE:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow ships with matplotlib
            raise DatasetError(
                f"{path}: palette png labels need Pillow to keep class indices "
                "(pip install pillow)"
            ) from None
        with Image.open(path) as img:
            return np.asarray(img)
    return read_label(path, unchanged=unchanged)


@functools.cache
def _cached_lut(mapping: tuple[tuple[int, int], ...], max_raw_id: int) -> np.ndarray:
    lut = build_lut(dict(mapping), max_raw_id)
    lut.flags.writeable = False
    return lut


class Reader(SegDataset):
    """A SegDataset over `Item`s whose labels are mapped through a raw-id LUT.

    Subclasses set ``label_space``, ``id_map`` (raw id -> class id),
    ``max_raw_id`` and ``layout``, build their items in ``__init__`` and call
    `finish`. A split none of whose label files exist is unlabelled
    (``has_labels`` False, ``label`` None) unless ``labels_required``.
    """

    id_map: dict[int, int] = {}
    max_raw_id: int = 255
    labels_required: bool = False
    #: extra image keys `load` reads from ``Item.extras``
    extra_keys: tuple[str, ...] = ()

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split)
        self._labelled = False
        self.missing_labels = 0

    @property
    def has_labels(self) -> bool:
        return self._labelled

    # --- construction helpers ------------------------------------------------

    def require_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise self.missing(path, what)
        return path

    def read_list(self, path: Path, what: str = "split list file") -> list[str]:
        """Non-empty, non-comment lines of a list file (missing -> error naming it)."""
        if not path.is_file():
            raise self.missing(path, what)
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines:
            raise DatasetError(f"{path}: {what} is empty")
        return lines

    def id_list_items(self, rule: PairRule) -> tuple[list[Item], Path]:
        """Items listed in ``ROOT/<split>.txt`` (ids or file names), or all images.

        Returns the items and the path to name in errors. GTA5 and SYNTHIA ship
        no official split, so list files of any common flavour are accepted.
        """
        if self.split is None:
            return rule.scan(), rule.image_root
        path = self.root / f"{self.split}.txt"
        ids = [strip_suffixes(Path(ln).name, (rule.image_suffix,)) for ln in self.read_list(path)]
        return [rule.item(i) for i in ids], path

    def finish(self, items: list[Item], where: Path) -> None:
        """Store items and decide whether this split is labelled."""
        if not items:
            raise DatasetError(
                f"{where}: no images found for split {self.split!r}. "
                f"Expected layout:\n{self.layout}"
            )
        labels = [it.label for it in items if it.label is not None]
        present = sum(1 for p in labels if p.is_file())
        if labels and present == 0 and self.labels_required:
            raise self.missing(labels[0], "label file (this dataset needs labels)")
        self._labelled = present > 0
        self.missing_labels = len(labels) - present if self._labelled else 0
        self.items = items

    def lut(self) -> np.ndarray:
        """The raw-id lookup table (built once per mapping)."""
        return _cached_lut(tuple(sorted(self.id_map.items())), self.max_raw_id)

    # --- loading --------------------------------------------------------------

    def read_raw_label(self, path: Path) -> np.ndarray:
        """The raw id map of a label file (SYNTHIA overrides to pick its channel)."""
        return read_palette_aware(path)

    def fit_label(self, raw: np.ndarray, image: np.ndarray, item: Item) -> np.ndarray:
        """Check the label matches the image size (GTA5 overrides to resize)."""
        if raw.shape[:2] != image.shape[:2]:
            raise DatasetError(
                f"{item.label}: label size {raw.shape[1]}x{raw.shape[0]} differs from image "
                f"{item.image} size {image.shape[1]}x{image.shape[0]}"
            )
        return raw

    def read_image_file(self, path: Path, what: str = "image file") -> np.ndarray:
        if not path.is_file():
            raise self.missing(path, what)
        return read_image(path)

    def load(self, item: Item) -> dict[str, Any]:
        image = self.read_image_file(item.image)
        sample: dict[str, Any] = {"image": image, "label": None, "name": item.name}
        for key in self.extra_keys:
            sample[key] = self.read_image_file(item.extras[key], f"{key} image file")
        if self._labelled and item.label is not None:
            sample["label"] = self.load_label(item, image)
        return sample

    def load_label(self, item: Item, image: np.ndarray) -> np.ndarray:
        path = item.label
        assert path is not None
        if not path.is_file():
            if not self.missing_labels:
                raise self.missing(path, "label file")
            raise DatasetError(
                f"{path}: label file not found; {self.missing_labels} of {len(self.items)} "
                f"label files of split {self.split!r} are missing, so it is only partly "
                f"labelled. Expected layout:\n{self.layout}"
            )
        raw = self.fit_label(self.read_raw_label(path), image, item)
        if raw.ndim != 2:
            raise DatasetError(
                f"{path}: expected a single-channel label id map, got shape {raw.shape}"
            )
        try:
            return apply_lut(raw, self.lut(), source=str(path))
        except ValueError as err:
            raise DatasetError(str(err)) from None
