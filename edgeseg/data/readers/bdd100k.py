"""BDD100K images (unlabelled target-domain frames)."""

from __future__ import annotations

from pathlib import Path

from edgeseg.data.readers._common import PairRule, Reader
from edgeseg.labels import CITYSCAPES19


class BDD100KDataset(Reader):
    """Unlabelled BDD100K frames; ``label_space`` is the space models adapt in."""

    label_space = CITYSCAPES19
    layout = "ROOT/images/100k/<split>/<name>.jpg\nsplits: train (default), val, test"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        super().__init__(root, split or "train")
        image_root = self.require_dir(
            self.root / "images" / "100k" / self.split, f"image folder of split {self.split!r}"
        )
        self.finish(PairRule(image_root, ".jpg").scan(), image_root)
