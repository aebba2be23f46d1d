"""Readers for what `edgeseg synth` writes (torch-free, like every reader)."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.base import DatasetError
from edgeseg.data.readers._common import Item, Reader
from edgeseg.labels import CITYSCAPES19, IGNORE_INDEX, identity_mapping

LAYOUT = (
    "ROOT/images/<domain>/<scene_id>.png    RGB frames (domain: day, night, dusk, fog, rain)\n"
    "ROOT/labels/<scene_id>.png             uint8 Cityscapes-19 trainIds (255 = ignore),\n"
    "                                       shared by all domains of a scene\n"
    "ROOT/splits/<domain>_<part>.txt        lines '<domain>/<scene_id>' (part: train, val)\n"
    "ROOT/pairs/{day,night,labels}/<pair_id>.png and ROOT/splits/pairs.txt (day/night pairs)\n"
    "ROOT/meta.json                         generator settings and counts\n"
    "(write one with: edgeseg synth --out ROOT)"
)


class _SynthReader(Reader):
    label_space = CITYSCAPES19
    id_map = {**identity_mapping(CITYSCAPES19), IGNORE_INDEX: IGNORE_INDEX}
    max_raw_id = CITYSCAPES19.num_classes - 1
    labels_required = True
    layout = LAYOUT

    def split_file(self, split: str | None = None) -> Path:
        split = split or self.split
        splits = self.root / "splits"
        path = splits / f"{split}.txt"
        if split and path.is_file():
            return path
        available = ", ".join(sorted(p.stem for p in splits.glob("*.txt"))) or "none"
        problem = (f"split file for split {split!r} not found" if split
                   else "a synthetic dataset needs a split, e.g. synthetic:ROOT:night_val")
        raise DatasetError(f"{path if split else self.root}: {problem} (available: "
                           f"{available}). Expected layout:\n{self.layout}")


class SyntheticDataset(_SynthReader):
    """One split (e.g. ``day_train``, ``night_val``) of a synthetic scene set, or several
    joined with ``+`` (``day_train+dusk_train+night_train+fog_train+rain_train``: every
    domain, e.g. to pretrain on all weathers).

    Sample names are scene ids, so the day and night versions of a val scene
    share a name; in a joined split they are ``<domain>_<scene_id>``, unique.
    """

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split)
        parts = (split or "").split("+")
        if len(parts) > 1 and not all(parts):
            raise DatasetError(f"{self.root}: split {split!r}: expected SPLIT or "
                               "SPLIT+SPLIT+..., e.g. day_train+night_train")
        items = []
        for part in parts:
            path = self.split_file(part or None)
            for line in self.read_list(path):
                domain, _, scene = line.partition("/")
                if not domain or not scene or "/" in scene:
                    raise DatasetError(f"{path}: expected lines '<domain>/<scene_id>', got "
                                       f"{line!r}")
                name = scene if len(parts) == 1 else f"{domain}_{scene}"
                items.append(Item(name, self.root / "images" / domain / f"{scene}.png",
                                  self.root / "labels" / f"{scene}.png"))
        self.finish(items, path)


class SyntheticPairs(_SynthReader):
    """Coarsely aligned day/night pairs: samples are ``{"image": day, "label": day
    labels, "night": night, "name": pair id}``; the night camera is offset by a few
    pixels, so apply the same geometry to both but expect no pixel correspondence."""

    extra_keys = ("night",)

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split or "pairs")
        path = self.split_file()
        pairs = self.root / "pairs"
        self.finish([Item(pid, pairs / "day" / f"{pid}.png", pairs / "labels" / f"{pid}.png",
                          {"night": pairs / "night" / f"{pid}.png"})
                     for pid in self.read_list(path)], path)
