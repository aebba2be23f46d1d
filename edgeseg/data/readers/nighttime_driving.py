"""Nighttime Driving test set (Dai & Van Gool): coarse Cityscapes labelIds at night."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.readers._common import PairRule, Reader
from edgeseg.labels import CITYSCAPES19, CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_MAX_ID


class NighttimeDrivingDataset(Reader):
    """The 50 annotated night frames, in Cityscapes-19 trainIds."""

    label_space = CITYSCAPES19
    id_map = CITYSCAPES_ID_TO_TRAINID
    max_raw_id = CITYSCAPES_MAX_ID
    layout = (
        "ROOT/leftImg8bit/<split>/night/<file>_leftImg8bit.png\n"
        "ROOT/gtCoarse_daytime_trainvaltest/<split>/night/<file>_gtCoarse_labelIds.png\n"
        "splits: test (default)"
    )

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split or "test")
        image_root = self.require_dir(
            self.root / "leftImg8bit" / self.split / "night",
            f"night image folder of split {self.split!r}",
        )
        label_root = self.root / "gtCoarse_daytime_trainvaltest" / self.split / "night"
        rule = PairRule(image_root, "_leftImg8bit.png", label_root, "_gtCoarse_labelIds.png")
        self.finish(rule.scan(), image_root)
