"""Cityscapes (gtFine labelIds -> Cityscapes-19 trainIds)."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.readers._common import PairRule, Reader
from edgeseg.labels import CITYSCAPES19, CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_MAX_ID


class CityscapesDataset(Reader):
    """The official Cityscapes tree; a split without ``gtFine`` is unlabelled target data."""

    label_space = CITYSCAPES19
    id_map = CITYSCAPES_ID_TO_TRAINID
    max_raw_id = CITYSCAPES_MAX_ID
    layout = (
        "ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
        "ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png\n"
        "splits: train, val, test (default train)"
    )

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split or "train")
        image_root = self.require_dir(
            self.root / "leftImg8bit" / self.split, f"image folder of split {self.split!r}"
        )
        rule = PairRule(image_root, "_leftImg8bit.png",
                        self.root / "gtFine" / self.split, "_gtFine_labelIds.png")
        self.finish(rule.scan(), image_root)
