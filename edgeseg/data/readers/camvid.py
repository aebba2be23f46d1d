"""CamVid, 11-class SegNet version, in this project's layout (see the data README)."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.base import DatasetError
from edgeseg.data.readers._common import PairRule, Reader
from edgeseg.labels import CAMVID11, CAMVID_MAX_ID, identity_mapping


class CamVidDataset(Reader):
    """A CamVid split from ``splits/<split>.txt`` or a plain ``images/<split>`` folder.

    Label 11 (unlabelled) becomes ignore. A split none of whose label files
    exist (dusk_test, labels withheld) loads unlabelled so evaluation can skip it.
    """

    label_space = CAMVID11
    id_map = identity_mapping(CAMVID11)
    max_raw_id = CAMVID_MAX_ID
    layout = (
        "ROOT/images/<folder>/<name>.png   (folder: train, val, test)\n"
        "ROOT/labels/<folder>/<name>.png   (ids 0..10, 11 = unlabelled)\n"
        "ROOT/splits/<split>.txt           lines '<folder>/<name>'\n"
        "splits: the split files (day_train, day_val, dusk_train, dusk_test) or a folder"
    )

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split)
        rule = PairRule(self.root / "images", ".png", self.root / "labels", ".png")
        split_file = self.root / "splits" / f"{split}.txt"
        folder = rule.image_root / str(split)
        if split and split_file.is_file():
            self.finish([rule.item(ln) for ln in self.read_list(split_file)], split_file)
        elif split and folder.is_dir():
            self.finish(
                PairRule(folder, ".png", rule.label_root / split, ".png").scan(), folder
            )
        else:
            available = sorted(p.stem for p in (self.root / "splits").glob("*.txt"))
            available += sorted(p.name for p in rule.image_root.glob("*") if p.is_dir())
            problem = f"camvid split {split!r} not found" if split else "camvid needs a split"
            raise DatasetError(
                f"{split_file if split else self.root}: {problem} (available: "
                f"{available or 'none'}). Expected layout:\n{self.layout}"
            )
